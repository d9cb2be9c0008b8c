#![warn(missing_docs)]
//! Procedural macros of epi. Use them through the `epi` crate: `#[epi::provider]`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, ImplItem, ImplItemFn, ItemImpl, LitStr,
    PathArguments, ReturnType, Type, Visibility,
};

/// Makes every public `&self` method of an impl block a dispatchable provider function.
///
/// A method takes zero or more arguments and returns a value or a `Result<T, E>` whose error
/// is shown with `Display`. Hosts call it by its name with the argument type `()` (none), the
/// argument's type (one; `&str` is called with `String`, `&[T]` with `Vec<T>`, `&T` with `T`)
/// or a tuple of them (several). Argument and output types must be serde types.
///
/// On a method, `#[epi(skip)]` keeps it out of the table and `#[epi(name = "other")]`
/// dispatches it under another name.
///
/// ```ignore
/// #[epi::provider]
/// impl Greeter {
///     pub fn greet(&self, name: &str) -> String { format!("Hello, {name}!") }
/// }
/// ```
#[proc_macro_attribute]
pub fn provider(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[epi::provider] takes no arguments; name the service in Provider::new",
        )
        .to_compile_error()
        .into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    match expand(&mut block) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let mut tokens = err.to_compile_error();
            tokens.extend(quote!(#block));
            tokens.into()
        }
    }
}

struct MethodOptions {
    skip: bool,
    name: Option<String>,
}

/// Reads and removes `#[epi(...)]` attributes of a method.
fn take_options(method: &mut ImplItemFn) -> syn::Result<MethodOptions> {
    let mut options = MethodOptions {
        skip: false,
        name: None,
    };
    let mut error = None;
    method.attrs.retain(|attr| {
        if !attr.path().is_ident("epi") {
            return true;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                options.skip = true;
                Ok(())
            } else if meta.path.is_ident("name") {
                options.name = Some(meta.value()?.parse::<LitStr>()?.value());
                Ok(())
            } else {
                Err(meta.error("expected `skip` or `name = \"...\"`"))
            }
        });
        if let Err(err) = parsed {
            error.get_or_insert(err);
        }
        false
    });
    match error {
        Some(err) => Err(err),
        None => Ok(options),
    }
}

/// How one parameter is stored in the argument value and passed to the method.
fn parameter(ty: &Type, access: Tokens) -> syn::Result<(Tokens, Tokens)> {
    match ty {
        Type::Reference(reference) => {
            if reference.mutability.is_some() {
                return Err(syn::Error::new(
                    ty.span(),
                    "provider arguments are shared by every provider: take `&T` or `T`, not `&mut T`",
                ));
            }
            let stored = match &*reference.elem {
                Type::Path(path) if path.path.is_ident("str") => quote!(::std::string::String),
                Type::Slice(slice) => {
                    let elem = &slice.elem;
                    quote!(::std::vec::Vec<#elem>)
                }
                other => quote!(#other),
            };
            Ok((stored, quote!(&#access)))
        }
        other => Ok((quote!(#other), quote!(::std::clone::Clone::clone(&#access)))),
    }
}

/// How a parameter of type `ty` is decoded on the stable path (`Method::Wire`) and passed
/// from `access` (a place behind a shared reference, so values are cloned, as in `call`): a
/// `&str` borrows from the encoded bytes.
fn wire_parameter(ty: &Type, access: Tokens) -> (Tokens, Tokens) {
    match ty {
        Type::Reference(reference) => match &*reference.elem {
            Type::Path(path) if path.path.is_ident("str") => {
                (quote!(::epi::export::WireStr<'de>), quote!(&*#access))
            }
            Type::Slice(slice) => {
                let elem = &slice.elem;
                (quote!(::std::vec::Vec<#elem>), quote!(&#access))
            }
            other => (quote!(#other), quote!(&#access)),
        },
        other => (quote!(#other), quote!(::std::clone::Clone::clone(&#access))),
    }
}

/// The output type and how to turn the method's return value into `Result<Output, String>`.
fn output(ret: &ReturnType, call: Tokens) -> (Tokens, Tokens) {
    let ty = match ret {
        ReturnType::Default => {
            return (quote!(()), quote!({ #call; ::std::result::Result::Ok(()) }))
        }
        ReturnType::Type(_, ty) => ty,
    };
    if let Type::Path(path) = &**ty {
        if let Some(last) = path.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(GenericArgument::Type(value)) = args.args.first() {
                        return (
                            quote!(#value),
                            quote!(#call.map_err(|err| ::std::string::ToString::to_string(&err))),
                        );
                    }
                }
            }
        }
    }
    (quote!(#ty), quote!(::std::result::Result::Ok(#call)))
}

fn expand(block: &mut ItemImpl) -> syn::Result<Tokens> {
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "#[epi::provider] does not support generic impl blocks",
        ));
    }
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[epi::provider] goes on an inherent impl block, not a trait impl",
        ));
    }
    let self_ty = block.self_ty.clone();
    let mut methods = Vec::new();
    let mut entries = Vec::new();
    // Dispatch names taken so far, with the method that took each.
    let mut names: Vec<(String, syn::Ident)> = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        let options = take_options(method)?;
        let is_public = matches!(method.vis, Visibility::Public(_));
        let by_ref_self = matches!(
            method.sig.inputs.first(),
            Some(FnArg::Receiver(receiver)) if receiver.reference.is_some() && receiver.mutability.is_none()
        );
        if options.skip || !is_public || !by_ref_self {
            continue;
        }
        if !method.sig.generics.params.is_empty() || method.sig.asyncness.is_some() {
            return Err(syn::Error::new(
                method.sig.span(),
                "provider methods cannot be generic or async (mark it #[epi(skip)] to keep it out)",
            ));
        }
        let params: Vec<&Type> = method
            .sig
            .inputs
            .iter()
            .skip(1)
            .filter_map(|arg| match arg {
                FnArg::Typed(typed) => Some(&*typed.ty),
                FnArg::Receiver(_) => None,
            })
            .collect();
        let (args_ty, passed, wire_ty, wire_passed): (Tokens, Vec<Tokens>, Tokens, Vec<Tokens>) =
            match params.len() {
                0 => (quote!(()), Vec::new(), quote!(()), Vec::new()),
                1 => {
                    let (stored, pass) = parameter(params[0], quote!((*args)))?;
                    let (wire, wire_pass) = wire_parameter(params[0], quote!((*args)));
                    (stored, vec![pass], wire, vec![wire_pass])
                }
                _ => {
                    let (mut stored, mut passed) = (Vec::new(), Vec::new());
                    let (mut wire, mut wire_passed) = (Vec::new(), Vec::new());
                    for (index, ty) in params.iter().enumerate() {
                        let index = syn::Index::from(index);
                        let (ty_stored, pass) = parameter(ty, quote!(args.#index))?;
                        let (ty_wire, wire_pass) = wire_parameter(ty, quote!(args.#index));
                        stored.push(ty_stored);
                        passed.push(pass);
                        wire.push(ty_wire);
                        wire_passed.push(wire_pass);
                    }
                    (
                        quote!((#(#stored,)*)),
                        passed,
                        quote!((#(#wire,)*)),
                        wire_passed,
                    )
                }
            };
        let ident = &method.sig.ident;
        let (output_ty, body) = output(&method.sig.output, quote!(provider.#ident(#(#passed),*)));
        let (_, wire_body) = output(
            &method.sig.output,
            quote!(provider.#ident(#(#wire_passed),*)),
        );
        let name = options.name.unwrap_or_else(|| ident.to_string());
        if let Some((_, first)) = names.iter().find(|(taken, _)| *taken == name) {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "two methods of this provider answer to the function `{name}`: `{first}` and `{ident}`; give one another `#[epi(name = \"...\")]`"
                ),
            ));
        }
        names.push((name.clone(), ident.clone()));
        let marker = format_ident!("EpiMethod_{}", ident);
        methods.push(quote! {
            #[allow(non_camel_case_types)]
            #[doc(hidden)]
            pub struct #marker;
            impl ::epi::export::Method for #marker {
                type Provider = #self_ty;
                type Args = #args_ty;
                type Output = #output_ty;
                type Wire<'de> = #wire_ty;
                const NAME: &'static str = #name;
                #[allow(unused_variables, clippy::unit_arg)]
                fn call(
                    provider: &Self::Provider,
                    args: &Self::Args,
                ) -> ::std::result::Result<Self::Output, ::std::string::String> {
                    #body
                }
                #[allow(unused_variables, clippy::unit_arg)]
                fn call_wire(
                    provider: &Self::Provider,
                    args: &Self::Wire<'_>,
                ) -> ::std::result::Result<Self::Output, ::std::string::String> {
                    #wire_body
                }
            }
        });
        entries.push(quote!(::epi::export::function_entry::<#marker>()));
    }
    Ok(quote! {
        #block
        const _: () = {
            #(#methods)*
            impl ::epi::Provides for #self_ty {
                fn functions() -> ::std::vec::Vec<::epi::export::FunctionEntry<Self>> {
                    ::std::vec![#(#entries),*]
                }
            }
        };
    })
}
