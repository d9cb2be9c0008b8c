//! The native baseline of the comparison benches: the test plugin's provider bodies behind a
//! `&dyn Trait`, and the loops a host without epi would write for each verb.

use std::hint::black_box;

use epi::Decision;

/// The test plugin's provider functions, natively.
pub trait Provide: Send + Sync {
    fn inc(&self, x: &u64) -> u64;
    fn tag(&self, name: &str, n: u64) -> String;
    fn pass(&self, x: &u64) -> Decision<u64>;
}

/// The test plugin's `inc`, `tag` and `pass` bodies.
pub struct Native {
    pub add: i64,
}

impl Provide for Native {
    fn tag(&self, name: &str, n: u64) -> String {
        if n % 2 == 1 {
            name.to_owned()
        } else {
            String::new()
        }
    }
    fn inc(&self, x: &u64) -> u64 {
        x.wrapping_add(self.add as u64)
    }
    fn pass(&self, _x: &u64) -> Decision<u64> {
        Decision::NoDecision
    }
}

/// `count` providers adding 1.
pub fn providers(count: usize) -> Vec<Box<dyn Provide>> {
    (0..count)
        .map(|_| Box::new(Native { add: 1 }) as Box<dyn Provide>)
        .collect()
}

/// `apply` of `inc`: every provider's result.
pub fn apply(providers: &[Box<dyn Provide>]) -> Vec<u64> {
    let providers = black_box(providers);
    let mut out = Vec::with_capacity(providers.len());
    for provider in providers {
        out.push(provider.inc(black_box(&41)));
    }
    out
}

/// `decide` of `pass`: the first decision.
pub fn decide(providers: &[Box<dyn Provide>]) -> Decision<u64> {
    for provider in black_box(providers) {
        if let Decision::Decided(value) = provider.pass(black_box(&41)) {
            return Decision::Decided(value);
        }
    }
    Decision::NoDecision
}

/// `apply` of `tag`: every provider's result.
pub fn tag(providers: &[Box<dyn Provide>], args: &(String, u64)) -> Vec<String> {
    let providers = black_box(providers);
    let mut out = Vec::with_capacity(providers.len());
    for provider in providers {
        let (name, n) = black_box(args);
        out.push(provider.tag(name, *n));
    }
    out
}

/// `pipe` of `inc`: each output the next input.
#[allow(dead_code)] // used by `instructions` only
pub fn pipe(providers: &[Box<dyn Provide>]) -> u64 {
    let mut value = black_box(41u64);
    for provider in black_box(providers) {
        value = provider.inc(&value);
    }
    value
}
