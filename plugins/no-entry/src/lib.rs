//! A shared library without epi's entry symbol: the loader must refuse it cleanly.

/// Some exported function, so the library is not empty.
#[no_mangle]
pub extern "C" fn not_an_epi_plugin(x: u32) -> u32 {
    x.wrapping_mul(3)
}
