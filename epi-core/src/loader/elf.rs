//! Checks that bytes are a complete shared library for this machine before `dlopen` sees them.
//!
//! `dlopen` of a truncated ELF can kill the process with SIGBUS instead of returning an error,
//! so every table and loadable segment the loader will touch must lie inside the file.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = elf::EM_AARCH64;

/// Returns why `bytes` cannot be a loadable shared library, or `Ok`.
pub(crate) fn validate(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err("it is not an ELF file (no ELF magic)".into());
    }
    let header = elf::FileHeader64::<Endianness>::parse(bytes)
        .map_err(|err| format!("unreadable 64-bit ELF header: {err}"))?;
    let endian = header
        .endian()
        .map_err(|err| format!("unsupported byte order: {err}"))?;
    if header.e_type(endian) != elf::ET_DYN {
        return Err(format!(
            "ELF type {} is not a shared object",
            header.e_type(endian)
        ));
    }
    if header.e_machine(endian) != MACHINE {
        return Err(format!(
            "built for ELF machine {}, this host is machine {MACHINE}",
            header.e_machine(endian)
        ));
    }
    let segments = header
        .program_headers(endian, bytes)
        .map_err(|err| format!("program headers lie outside the file (truncated?): {err}"))?;
    header
        .section_headers(endian, bytes)
        .map_err(|err| format!("section headers lie outside the file (truncated?): {err}"))?;
    let mut has_dynamic = false;
    for segment in segments {
        let kind = segment.p_type(endian);
        has_dynamic |= kind == elf::PT_DYNAMIC;
        if kind == elf::PT_LOAD || kind == elf::PT_DYNAMIC {
            let start = segment.p_offset(endian);
            let end = start.checked_add(segment.p_filesz(endian));
            if end.is_none_or(|end| end > bytes.len() as u64) {
                return Err(format!(
                    "a segment ends at byte {} but the file has {} bytes (truncated?)",
                    end.unwrap_or(u64::MAX),
                    bytes.len()
                ));
            }
        }
    }
    if !has_dynamic {
        return Err("it has no dynamic section".into());
    }
    Ok(())
}
