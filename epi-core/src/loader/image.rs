//! What the dynamic loader will trust in a plugin file, checked from its bytes before `dlopen`
//! sees them, and the plugin's entry descriptor read from those bytes.
//!
//! `ld.so` follows the dynamic section's addresses without bounds checks: a damaged hash
//! table, symbol table, string offset or relocation makes it read or write wherever the
//! damage points, which may or may not crash depending on where the library was mapped. The
//! probe process (see [`super::probe`]) catches damage that crashes every time; this module
//! refuses, before anything runs, the damage whose effect depends on the address layout:
//! every table the dynamic section names lies inside the file's loaded bytes, every hash chain
//! ends inside its table, every symbol and string index is in range, every relocation writes
//! inside a writable segment with a known type, every initialiser points at code.
//!
//! The entry descriptor ([`crate::abi::PluginEntry`]) is read from the file too: found in the
//! dynamic symbol table by a linear scan (no hash walk), its pointers resolved through their
//! relocations, its strings read from the file. The host never dereferences a pointer of the
//! plugin's to decide whether to load it.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// `DT_RELR` (packed relative relocations), which this version of `object` does not name.
const DT_RELR: u32 = 36;

/// Tables larger than this many entries are refused (a build has a few thousand).
const MAX_ENTRIES: u64 = 1 << 22;
/// The largest thread-local image accepted (a build has a few hundred bytes).
const MAX_TLS_BYTES: u64 = 1 << 20;
/// The longest string of the entry descriptor read.
const MAX_ENTRY_STRING: u64 = 4096;

/// A loadable segment.
#[derive(Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    flags: u32,
}

/// The parts of a shared library `ld.so` reads, bounds-checked.
pub(crate) struct Image<'a> {
    bytes: &'a [u8],
    segments: Vec<Segment>,
    symtab: u64,
    strtab: u64,
    strsz: u64,
    symbols: u64,
    /// `(r_offset, type, symbol, addend)` of every dynamic relocation.
    relocations: Vec<(u64, u32, u32, i64)>,
}

/// The entry descriptor as the file holds it.
pub(crate) struct FileEntry {
    /// Address of the descriptor relative to the library's load address.
    pub(crate) vaddr: u64,
    pub(crate) magic: [u8; 8],
    pub(crate) abi_major: u32,
    pub(crate) panic_unwind: u32,
    pub(crate) target: String,
    pub(crate) epi_version: String,
    pub(crate) build_info: String,
    /// Address of `init` relative to the load address.
    pub(crate) init: u64,
}

type Result<T> = std::result::Result<T, String>;

fn u32_at(bytes: &[u8], at: u64) -> Result<u32> {
    let at = usize::try_from(at).map_err(|_| "offset out of range")?;
    bytes
        .get(at..at.saturating_add(4))
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("a read at byte {at} lies outside the file"))
}

fn u64_at(bytes: &[u8], at: u64) -> Result<u64> {
    let at = usize::try_from(at).map_err(|_| "offset out of range")?;
    bytes
        .get(at..at.saturating_add(8))
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("a read at byte {at} lies outside the file"))
}

impl<'a> Image<'a> {
    /// Parses and checks `bytes` (already known to be a complete 64-bit little-endian ELF
    /// shared object for this machine, see [`super::elf::validate`]).
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self> {
        let header = elf::FileHeader64::<Endianness>::parse(bytes).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        if endian != Endianness::Little {
            return Err("a big-endian library on a little-endian host".into());
        }
        let mut segments = Vec::new();
        let mut dynamic = None;
        let mut tls = None;
        let mut relro = None;
        for segment in header
            .program_headers(endian, bytes)
            .map_err(|e| e.to_string())?
        {
            let seg = Segment {
                vaddr: segment.p_vaddr(endian),
                memsz: segment.p_memsz(endian),
                offset: segment.p_offset(endian),
                filesz: segment.p_filesz(endian),
                flags: segment.p_flags(endian),
            };
            match segment.p_type(endian) {
                elf::PT_LOAD => {
                    if seg.memsz < seg.filesz || seg.vaddr.checked_add(seg.memsz).is_none() {
                        return Err(
                            "a loadable segment is smaller in memory than in the file".into()
                        );
                    }
                    segments.push(seg);
                }
                elf::PT_DYNAMIC => dynamic = Some(seg),
                elf::PT_TLS => tls = Some((seg, segment.p_align(endian))),
                elf::PT_GNU_RELRO => relro = Some(seg),
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err("it has no loadable segment".into());
        }
        let dynamic = dynamic.ok_or("it has no dynamic section")?;
        let mut image = Image {
            bytes,
            segments,
            symtab: 0,
            strtab: 0,
            strsz: 0,
            symbols: 0,
            relocations: Vec::new(),
        };
        if let Some((tls, align)) = tls {
            // The TLS image is copied for every thread from `p_vaddr`, `p_filesz` bytes.
            if tls.memsz < tls.filesz || tls.memsz > MAX_TLS_BYTES || !align.is_power_of_two() {
                return Err("the thread-local segment has an implausible size or alignment".into());
            }
            image.offset(tls.vaddr, tls.filesz, "thread-local image")?;
        }
        if let Some(relro) = relro {
            // Made read-only after relocation: it must lie inside one writable segment.
            if !image.mapped(relro.vaddr, relro.memsz, elf::PF_W) {
                return Err(
                    "the read-only-after-relocation range is not inside a writable segment".into(),
                );
            }
        }
        image.check_sections(relro)?;
        image.check_dynamic(dynamic)?;
        Ok(image)
    }

    /// Every allocated section lies inside a segment with the access its flags need, and no
    /// section written at run time is made read-only after relocation: damage to the program
    /// headers that would fault only once the code runs (data in a read-only segment, code in
    /// a non-executable one) is refused here.
    fn check_sections(&self, relro: Option<Segment>) -> Result<()> {
        let header =
            elf::FileHeader64::<Endianness>::parse(self.bytes).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        let sections = header
            .sections(endian, self.bytes)
            .map_err(|e| format!("unreadable section headers: {e}"))?;
        for section in sections.iter() {
            let flags = section.sh_flags.get(endian);
            if flags & u64::from(elf::SHF_ALLOC) == 0 || flags & u64::from(elf::SHF_TLS) != 0 {
                continue;
            }
            let (address, size) = (section.sh_addr.get(endian), section.sh_size.get(endian));
            let name = sections
                .section_name(endian, section)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            let mut needs = 0;
            if flags & u64::from(elf::SHF_WRITE) != 0 {
                needs |= elf::PF_W;
            }
            if flags & u64::from(elf::SHF_EXECINSTR) != 0 {
                needs |= elf::PF_X;
            }
            if !self.mapped(address, size, needs) {
                return Err(format!(
                    "section `{name}` is not inside a segment that allows what it needs"
                ));
            }
            // Program data: written by code at run time (unlike the tables the loader fills
            // before making them read-only: `.data.rel.ro`, `.got`, `.dynamic`, ...).
            let written_at_run_time = flags & u64::from(elf::SHF_WRITE) != 0
                && (name == ".data"
                    || name == ".bss"
                    || name.starts_with(".bss.")
                    || (name.starts_with(".data.") && !name.starts_with(".data.rel.ro")));
            if let Some(relro) = relro {
                let overlaps = address < relro.vaddr + relro.memsz && relro.vaddr < address + size;
                if written_at_run_time && size > 0 && overlaps {
                    return Err(format!(
                        "section `{name}` is written at run time but made read-only after relocation"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The file offset of `len` bytes at address `vaddr`, which must lie in the file-backed
    /// part of one loadable segment.
    fn offset(&self, vaddr: u64, len: u64, what: &str) -> Result<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr.saturating_add(len) <= s.vaddr + s.filesz)
            .map(|s| s.offset + (vaddr - s.vaddr))
            .filter(|offset| offset.saturating_add(len) <= self.bytes.len() as u64)
            .ok_or_else(|| format!("the {what} (address {vaddr:#x}, {len} bytes) lies outside the file's loaded bytes"))
    }

    /// Whether `len` bytes at `vaddr` lie inside a segment with all of `flags`.
    fn mapped(&self, vaddr: u64, len: u64, flags: u32) -> bool {
        self.segments.iter().any(|s| {
            s.flags & flags == flags
                && vaddr >= s.vaddr
                && vaddr.saturating_add(len) <= s.vaddr + s.memsz
        })
    }

    fn check_dynamic(&mut self, dynamic: Segment) -> Result<()> {
        let mut tags: Vec<(i64, u64)> = Vec::new();
        let start = dynamic.offset;
        let end = start.saturating_add(dynamic.filesz);
        let mut at = start;
        loop {
            if at + 16 > end {
                return Err("the dynamic section has no end marker".into());
            }
            let tag = u64_at(self.bytes, at)? as i64;
            let value = u64_at(self.bytes, at + 8)?;
            if tag == elf::DT_NULL as i64 {
                break;
            }
            tags.push((tag, value));
            at += 16;
        }
        let get = |tag: u32| tags.iter().find(|(t, _)| *t == tag as i64).map(|(_, v)| *v);
        self.strtab = get(elf::DT_STRTAB).ok_or("the dynamic section names no string table")?;
        self.strsz = get(elf::DT_STRSZ).ok_or("the dynamic section gives no string table size")?;
        self.offset(self.strtab, self.strsz, "dynamic string table")?;
        self.symtab = get(elf::DT_SYMTAB).ok_or("the dynamic section names no symbol table")?;
        if get(elf::DT_SYMENT).is_some_and(|size| size != 24) {
            return Err("the symbol entry size is not 24 bytes".into());
        }
        for (tag, value) in &tags {
            if [
                elf::DT_NEEDED,
                elf::DT_SONAME,
                elf::DT_RPATH,
                elf::DT_RUNPATH,
            ]
            .iter()
            .any(|t| *t as i64 == *tag)
            {
                self.string(*value, "library name")?;
            }
        }
        // The hash table counts the exported symbols; the imports before them are counted by
        // the `.dynsym` section header (which `ld.so` never reads: it only bounds this check).
        let hashed = self.symbol_count(get(elf::DT_GNU_HASH), get(elf::DT_HASH))?;
        self.symbols = hashed.max(self.dynsym_section_count().unwrap_or(0));
        self.offset(self.symtab, self.symbols * 24, "dynamic symbol table")?;
        self.check_symbols()?;
        if let Some(versym) = get(elf::DT_VERSYM) {
            self.offset(versym, self.symbols * 2, "symbol version table")?;
        }
        if let Some(verneed) = get(elf::DT_VERNEED) {
            self.check_version_needs(verneed, get(elf::DT_VERNEEDNUM).unwrap_or(0))?;
        }
        if let Some(verdef) = get(elf::DT_VERDEF) {
            self.check_version_defs(verdef, get(elf::DT_VERDEFNUM).unwrap_or(0))?;
        }
        for (table, size, what) in [
            (elf::DT_RELA, elf::DT_RELASZ, "relocation table"),
            (elf::DT_JMPREL, elf::DT_PLTRELSZ, "PLT relocation table"),
        ] {
            if let Some(address) = get(table) {
                let size = get(size).ok_or_else(|| format!("the {what} has no size"))?;
                self.read_relocations(address, size, what)?;
            }
        }
        if get(elf::DT_REL).is_some() || get(DT_RELR).is_some() {
            return Err("REL or RELR relocations (this host reads RELA only)".into());
        }
        if get(elf::DT_TEXTREL).is_some() {
            return Err("relocations in code (DT_TEXTREL)".into());
        }
        for (function, what) in [(elf::DT_INIT, "initialiser"), (elf::DT_FINI, "finaliser")] {
            if let Some(address) = get(function) {
                if !self.mapped(address, 1, elf::PF_X) {
                    return Err(format!("the {what} at {address:#x} is not in code"));
                }
            }
        }
        for (array, size, what) in [
            (
                elf::DT_INIT_ARRAY,
                elf::DT_INIT_ARRAYSZ,
                "initialiser array",
            ),
            (elf::DT_FINI_ARRAY, elf::DT_FINI_ARRAYSZ, "finaliser array"),
            (
                elf::DT_PREINIT_ARRAY,
                elf::DT_PREINIT_ARRAYSZ,
                "pre-initialiser array",
            ),
        ] {
            if let Some(address) = get(array) {
                let size = get(size).unwrap_or(0);
                self.offset(address, size, what)?;
                self.check_function_slots(address, size, what)?;
            }
        }
        Ok(())
    }

    /// Entries of the `.dynsym` section, if its header describes the table the dynamic
    /// section names.
    fn dynsym_section_count(&self) -> Option<u64> {
        let header = elf::FileHeader64::<Endianness>::parse(self.bytes).ok()?;
        let endian = header.endian().ok()?;
        let sections = header.section_headers(endian, self.bytes).ok()?;
        sections.iter().find_map(|section| {
            (section.sh_type.get(endian) == elf::SHT_DYNSYM
                && section.sh_addr.get(endian) == self.symtab)
                .then(|| section.sh_size.get(endian) / 24)
                .filter(|count| *count <= MAX_ENTRIES)
        })
    }

    /// Checks a NUL-terminated string at `offset` of the string table.
    fn string(&self, offset: u64, what: &str) -> Result<&'a [u8]> {
        if offset >= self.strsz {
            return Err(format!("a {what} lies outside the string table"));
        }
        let start = self.offset(self.strtab, self.strsz, "dynamic string table")? + offset;
        let rest = &self.bytes[start as usize..(start + self.strsz - offset) as usize];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| format!("a {what} runs past the string table"))?;
        Ok(&rest[..end])
    }

    /// The number of dynamic symbols, from the hash table, whose chains are all checked.
    fn symbol_count(&self, gnu: Option<u64>, sysv: Option<u64>) -> Result<u64> {
        if let Some(address) = gnu {
            let at = self.offset(address, 16, "GNU hash table")?;
            let buckets = u32_at(self.bytes, at)? as u64;
            let base = u32_at(self.bytes, at + 4)? as u64;
            let blooms = u32_at(self.bytes, at + 8)? as u64;
            if buckets == 0 || blooms == 0 || !blooms.is_power_of_two() {
                return Err("the GNU hash table has no buckets or a bad bloom filter size".into());
            }
            if buckets > MAX_ENTRIES || blooms > MAX_ENTRIES {
                return Err("the GNU hash table is implausibly large".into());
            }
            let table = self.offset(address, 16 + blooms * 8 + buckets * 4, "GNU hash table")?;
            let first_chain = table + 16 + blooms * 8 + buckets * 4;
            let mut count = base;
            for bucket in 0..buckets {
                let start = u32_at(self.bytes, table + 16 + blooms * 8 + bucket * 4)? as u64;
                if start == 0 {
                    continue;
                }
                if start < base {
                    return Err("a GNU hash bucket points below the hashed symbols".into());
                }
                // Follow the chain to its end bit, inside the file's bytes.
                let mut index = start;
                loop {
                    if index - base > MAX_ENTRIES {
                        return Err("a GNU hash chain does not end".into());
                    }
                    let chain_vaddr = address + 16 + blooms * 8 + buckets * 4 + (index - base) * 4;
                    let value = u32_at(self.bytes, self.offset(chain_vaddr, 4, "GNU hash chain")?)?;
                    let _ = first_chain;
                    if value & 1 == 1 {
                        break;
                    }
                    index += 1;
                }
                count = count.max(index + 1);
            }
            return Ok(count);
        }
        if let Some(address) = sysv {
            let at = self.offset(address, 8, "hash table")?;
            let buckets = u32_at(self.bytes, at)? as u64;
            let chains = u32_at(self.bytes, at + 4)? as u64;
            if buckets == 0 || chains > MAX_ENTRIES || buckets > MAX_ENTRIES {
                return Err("the hash table has no buckets or is implausibly large".into());
            }
            let at = self.offset(address, 8 + (buckets + chains) * 4, "hash table")?;
            for index in 0..buckets + chains {
                if u32_at(self.bytes, at + 8 + index * 4)? as u64 >= chains {
                    return Err("a hash table entry points past the symbols".into());
                }
            }
            return Ok(chains);
        }
        Err("the dynamic section names no symbol hash table".into())
    }

    fn check_symbols(&self) -> Result<()> {
        let table = self.offset(self.symtab, self.symbols * 24, "dynamic symbol table")?;
        for index in 0..self.symbols {
            let at = table + index * 24;
            let name = u32_at(self.bytes, at)? as u64;
            self.string(name, "symbol name")?;
            let info = self.bytes[at as usize + 4];
            let section =
                u16::from_le_bytes([self.bytes[at as usize + 6], self.bytes[at as usize + 7]]);
            let value = u64_at(self.bytes, at + 8)?;
            let defined = section != elf::SHN_UNDEF && section != elf::SHN_ABS;
            if defined && info & 0xf != elf::STT_TLS && !self.mapped(value, 0, 0) {
                return Err(format!(
                    "symbol {index} points outside the library ({value:#x})"
                ));
            }
        }
        Ok(())
    }

    fn check_version_needs(&self, address: u64, count: u64) -> Result<()> {
        let mut at = address;
        for _ in 0..count.min(MAX_ENTRIES) {
            let entry = self.offset(at, 16, "version needs")?;
            self.string(u32_at(self.bytes, entry + 4)? as u64, "version file name")?;
            let auxiliaries = u16::from_le_bytes([
                self.bytes[entry as usize + 2],
                self.bytes[entry as usize + 3],
            ]);
            let mut aux = at + u32_at(self.bytes, entry + 8)? as u64;
            for _ in 0..auxiliaries {
                let entry = self.offset(aux, 16, "version need entry")?;
                self.string(u32_at(self.bytes, entry + 8)? as u64, "version name")?;
                aux += u32_at(self.bytes, entry + 12)? as u64;
            }
            let next = u32_at(self.bytes, entry + 12)? as u64;
            if next == 0 {
                break;
            }
            at += next;
        }
        Ok(())
    }

    fn check_version_defs(&self, address: u64, count: u64) -> Result<()> {
        let mut at = address;
        for _ in 0..count.min(MAX_ENTRIES) {
            let entry = self.offset(at, 20, "version definitions")?;
            let auxiliaries = u16::from_le_bytes([
                self.bytes[entry as usize + 6],
                self.bytes[entry as usize + 7],
            ]);
            let mut aux = at + u32_at(self.bytes, entry + 12)? as u64;
            for _ in 0..auxiliaries {
                let entry = self.offset(aux, 8, "version definition entry")?;
                self.string(u32_at(self.bytes, entry)? as u64, "version name")?;
                aux += u32_at(self.bytes, entry + 4)? as u64;
            }
            let next = u32_at(self.bytes, entry + 16)? as u64;
            if next == 0 {
                break;
            }
            at += next;
        }
        Ok(())
    }

    fn read_relocations(&mut self, address: u64, size: u64, what: &str) -> Result<()> {
        if size % 24 != 0 || size / 24 > MAX_ENTRIES {
            return Err(format!("the {what} has a bad size"));
        }
        let table = self.offset(address, size, what)?;
        for index in 0..size / 24 {
            let at = table + index * 24;
            let offset = u64_at(self.bytes, at)?;
            let info = u64_at(self.bytes, at + 8)?;
            let addend = u64_at(self.bytes, at + 16)? as i64;
            let (kind, symbol) = (info as u32, (info >> 32) as u32);
            if !self.mapped(offset, 8, elf::PF_W) {
                return Err(format!(
                    "a relocation writes outside the writable segments ({offset:#x})"
                ));
            }
            if symbol as u64 >= self.symbols {
                return Err(format!(
                    "a relocation names symbol {symbol} of {}",
                    self.symbols
                ));
            }
            check_relocation_kind(kind)?;
            if kind == RELATIVE && !self.mapped(addend as u64, 0, 0) {
                return Err(format!(
                    "a relative relocation points outside the library ({addend:#x})"
                ));
            }
            if kind == IRELATIVE && !self.mapped(addend as u64, 1, elf::PF_X) {
                return Err("an indirect function resolver is not in code".into());
            }
            self.relocations.push((offset, kind, symbol, addend));
        }
        Ok(())
    }

    /// Each slot of an initialiser or finaliser array must end up pointing at code.
    fn check_function_slots(&self, address: u64, size: u64, what: &str) -> Result<()> {
        for slot in (address..address + size).step_by(8) {
            let target = match self.relocation_at(slot) {
                Some((RELATIVE, _, addend)) => addend as u64,
                Some(_) => continue,
                None => u64_at(self.bytes, self.offset(slot, 8, what)?)?,
            };
            // `0` and `-1` are placeholders the loader skips.
            if target != 0 && target != u64::MAX && !self.mapped(target, 1, elf::PF_X) {
                return Err(format!(
                    "an entry of the {what} does not point at code ({target:#x})"
                ));
            }
        }
        Ok(())
    }

    fn relocation_at(&self, vaddr: u64) -> Option<(u32, u32, i64)> {
        self.relocations
            .iter()
            .find(|(offset, ..)| *offset == vaddr)
            .map(|(_, kind, symbol, addend)| (*kind, *symbol, *addend))
    }

    /// The value an 8-byte pointer at `vaddr` has once relocated, relative to the load
    /// address.
    fn pointer(&self, vaddr: u64) -> Result<u64> {
        match self.relocation_at(vaddr) {
            Some((RELATIVE, _, addend)) => Ok(addend as u64),
            Some(_) => Err(format!("the pointer at {vaddr:#x} is bound to a symbol")),
            None => u64_at(self.bytes, self.offset(vaddr, 8, "entry descriptor")?),
        }
    }

    /// The address of the dynamic symbol `name`, found by scanning the table.
    pub(crate) fn symbol(&self, name: &str) -> Option<u64> {
        let table = self
            .offset(self.symtab, self.symbols * 24, "symbols")
            .ok()?;
        (0..self.symbols).find_map(|index| {
            let at = table + index * 24;
            let section =
                u16::from_le_bytes([self.bytes[at as usize + 6], self.bytes[at as usize + 7]]);
            let name_at = u32_at(self.bytes, at).ok()? as u64;
            (section != elf::SHN_UNDEF
                && self.string(name_at, "symbol name").ok()? == name.as_bytes())
            .then(|| u64_at(self.bytes, at + 8).ok())
            .flatten()
        })
    }

    /// Reads the entry descriptor at `vaddr` from the file: the leading fields every ABI
    /// version shares, and, when `full`, the rest of this ABI's layout.
    pub(crate) fn entry(&self, vaddr: u64, full: bool) -> Result<FileEntry> {
        let at = self.offset(vaddr, 12, "entry descriptor")?;
        let mut entry = FileEntry {
            vaddr,
            magic: self.bytes[at as usize..at as usize + 8].try_into().unwrap(),
            abi_major: u32_at(self.bytes, at + 8)?,
            panic_unwind: 0,
            target: String::new(),
            epi_version: String::new(),
            build_info: String::new(),
            init: 0,
        };
        if !full {
            return Ok(entry);
        }
        let at = self.offset(vaddr, 80, "entry descriptor")?;
        entry.panic_unwind = u32_at(self.bytes, at + 16)?;
        let text = |field: u64| -> Result<String> {
            let pointer = self.pointer(vaddr + field)?;
            let len = u64_at(self.bytes, at + field + 8)?;
            if len > MAX_ENTRY_STRING {
                return Err("a string of the entry descriptor is implausibly long".into());
            }
            let start = self.offset(pointer, len, "entry descriptor string")?;
            Ok(
                String::from_utf8_lossy(&self.bytes[start as usize..(start + len) as usize])
                    .into_owned(),
            )
        };
        entry.target = text(24)?;
        entry.epi_version = text(40)?;
        entry.build_info = text(56)?;
        entry.init = self.pointer(vaddr + 72)?;
        if !self.mapped(entry.init, 1, elf::PF_X) {
            return Err(format!(
                "the entry's init function ({:#x}) is not in code",
                entry.init
            ));
        }
        Ok(entry)
    }
}

#[cfg(target_arch = "x86_64")]
const RELATIVE: u32 = elf::R_X86_64_RELATIVE;
#[cfg(target_arch = "x86_64")]
const IRELATIVE: u32 = elf::R_X86_64_IRELATIVE;
#[cfg(target_arch = "aarch64")]
const RELATIVE: u32 = elf::R_AARCH64_RELATIVE;
#[cfg(target_arch = "aarch64")]
const IRELATIVE: u32 = elf::R_AARCH64_IRELATIVE;

/// Refuses relocation types the dynamic loader would apply somewhere unexpected.
fn check_relocation_kind(kind: u32) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    let known = [
        elf::R_X86_64_NONE,
        elf::R_X86_64_64,
        elf::R_X86_64_GLOB_DAT,
        elf::R_X86_64_JUMP_SLOT,
        elf::R_X86_64_RELATIVE,
        elf::R_X86_64_DTPMOD64,
        elf::R_X86_64_DTPOFF64,
        elf::R_X86_64_TPOFF64,
        elf::R_X86_64_IRELATIVE,
    ];
    #[cfg(target_arch = "aarch64")]
    let known = [
        elf::R_AARCH64_NONE,
        elf::R_AARCH64_ABS64,
        elf::R_AARCH64_GLOB_DAT,
        elf::R_AARCH64_JUMP_SLOT,
        elf::R_AARCH64_RELATIVE,
        elf::R_AARCH64_TLS_DTPMOD,
        elf::R_AARCH64_TLS_DTPREL,
        elf::R_AARCH64_TLS_TPREL,
        elf::R_AARCH64_TLSDESC,
        elf::R_AARCH64_IRELATIVE,
    ];
    if known.contains(&kind) {
        Ok(())
    } else {
        Err(format!(
            "relocation type {kind} is not one a plugin library uses"
        ))
    }
}
