//! Files whose content would crash a process that opens them: C libraries whose constructors
//! abort, exit or hang, and 2,000 damaged builds of a real plugin. Each is refused with an
//! error naming it, and the host that tried keeps serving (the probe process took the hit).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use epi::{LoadError, RegistryConfig, Upgrade};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{elf, Endianness};

/// Builds a C shared library whose constructor runs `body`; with `entry`, it also exports
/// an epi entry descriptor that passes every check (magic, ABI, target, epi version), so
/// only loading it can tell.
fn c_library(dir: &Path, name: &str, body: &str, entry: bool) -> PathBuf {
    let c_string = |text: &str| format!("{text:?}");
    let descriptor = if entry {
        format!(
            "struct text {{ const char *ptr; unsigned long len; }};\n\
             struct entry {{ char magic[8]; unsigned abi_major, abi_minor, panic_unwind, reserved;\n\
               struct text target, version, build; void (*init)(void); }};\n\
             static void init(void) {{}}\n\
             const struct entry EPI_PLUGIN_ENTRY = {{ \"EPIPLUG\", {abi}, 0, 1, 0,\n\
               {{ {target}, {target_len} }}, {{ {version}, {version_len} }}, {{ {build}, {build_len} }}, init }};\n",
            abi = epi::abi::ABI_MAJOR,
            target = c_string(epi::abi::TARGET),
            target_len = epi::abi::TARGET.len(),
            version = c_string(epi::abi::EPI_VERSION),
            version_len = epi::abi::EPI_VERSION.len(),
            build = c_string(epi::abi::BUILD_INFO),
            build_len = epi::abi::BUILD_INFO.len(),
        )
    } else {
        String::new()
    };
    let source = dir.join(format!("{name}.c"));
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n{descriptor}\
             __attribute__((constructor)) static void on_load(void) {{ {body} }}\n"
        ),
    )
    .unwrap();
    let library = dir.join(format!("{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("this test compiles C libraries: install a C compiler (apt-get install gcc)");
    assert!(status.success(), "cc failed on {}", source.display());
    library
}

fn refusal(result: Result<epi::PluginInfo, LoadError>) -> String {
    match result {
        Ok(info) => panic!("{} loaded", info.app),
        Err(err @ LoadError::ProbeFailed { .. }) => err.to_string(),
        Err(other) => panic!("refused without a probe failure: {other}"),
    }
}

#[test]
fn c_libraries_whose_constructors_abort_exit_or_hang_are_refused_and_the_host_serves_on() {
    let dir = plugin_dir();
    let registry = registry_with(RegistryConfig {
        load_probe_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    });
    registry.load(plugin_library("epi-plugin-hello")).unwrap();

    // A library that is no plugin is refused from its bytes: its constructor never runs.
    let mark = dir.path().join("constructor-ran");
    let plain = c_library(
        dir.path(),
        "plain",
        &format!("fclose(fopen({:?}, \"w\"));", mark.display().to_string()),
        false,
    );
    match registry.load(&plain) {
        Err(LoadError::NoEntry { path, .. }) => assert_eq!(path, plain),
        other => panic!("{other:?}"),
    }
    assert!(!mark.exists(), "the refused library's constructor ran");

    let aborts = c_library(dir.path(), "aborts", "abort();", true);
    let err = refusal(registry.load(&aborts));
    assert!(
        err.contains("aborts.so") && err.contains("SIGABRT"),
        "{err}"
    );

    let crashes = c_library(dir.path(), "crashes", "*(volatile int *)0 = 1;", true);
    let err = refusal(registry.load(&crashes));
    assert!(
        err.contains("crashes.so") && err.contains("SIGSEGV"),
        "{err}"
    );

    let exits = c_library(dir.path(), "exits", "_exit(3);", true);
    let err = refusal(registry.load(&exits));
    assert!(
        err.contains("exits.so") && err.contains("exit status 3"),
        "{err}"
    );

    let hangs = c_library(dir.path(), "hangs", "for (;;) pause();", true);
    let err = refusal(registry.load(&hangs));
    assert!(
        err.contains("hangs.so") && err.contains("did not finish"),
        "{err}"
    );

    assert_eq!(
        registry
            .function::<String, String>("greeting", "greet")
            .apply(&"Ada".into())
            .unwrap(),
        vec!["Hello, Ada!"]
    );
    assert_still_serving(&registry, dir.path());
}

/// A seeded generator (xorshift64*): the same seed gives the same 2,000 files.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The byte ranges of `bytes` whose damage the loader meets: the ELF header, the dynamic
/// section, the dynamic string table, the symbol hash table and the entry descriptor.
///
/// Left out: the plugin's code and data, and the program headers, symbol values and
/// relocations, whose
/// damage can also leave a library that loads cleanly but whose code then misbehaves (a
/// relocated function pointer turned null, a segment's size changed) once `init` or a provider
/// runs in the host. The probe does not run `init`, which may touch the plugin's real state;
/// `epi::fatal` names the plugin when its code kills the host, and only a plugin running in a
/// process of its own would survive that.
fn regions(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let file = ElfFile64::<Endianness>::parse(bytes).expect("a 64-bit ELF build");
    let endian = file.endian();
    let header = file.elf_header();
    let mut regions = vec![("ELF header".to_owned(), 0..64)];
    for segment in header.program_headers(endian, bytes).unwrap() {
        if segment.p_type(endian) == elf::PT_DYNAMIC {
            let start = segment.p_offset(endian) as usize;
            regions.push((
                "dynamic section".to_owned(),
                start..start + segment.p_filesz(endian) as usize,
            ));
        }
    }
    let sections = header.sections(endian, bytes).unwrap();
    for section in sections.iter() {
        let name = sections
            .section_name(endian, section)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        if [".dynstr", ".gnu.hash"].contains(&name.as_str())
            && section.sh_type(endian) != elf::SHT_NOBITS
        {
            let start = section.sh_offset(endian) as usize;
            let size = section.sh_size(endian) as usize;
            regions.push((name, start..start + size));
        }
    }
    // The entry descriptor: found through the dynamic symbols, mapped to its file offset.
    use object::{Object, ObjectSymbol};
    let entry = file
        .dynamic_symbols()
        .find(|symbol| symbol.name() == Ok(epi::abi::ENTRY_SYMBOL))
        .expect("the build exports its entry");
    let offset = header
        .program_headers(endian, bytes)
        .unwrap()
        .iter()
        .filter(|segment| segment.p_type(endian) == elf::PT_LOAD)
        .find_map(|segment| {
            let vaddr = segment.p_vaddr(endian);
            (entry.address() >= vaddr && entry.address() < vaddr + segment.p_filesz(endian))
                .then(|| (entry.address() - vaddr + segment.p_offset(endian)) as usize)
        })
        .expect("the entry lies in the file");
    regions.push((
        "entry descriptor".to_owned(),
        offset..offset + entry.size() as usize,
    ));
    regions
}

/// A copy of `good` with 1 to 8 bytes of one region overwritten (same size).
fn mutate(
    good: &[u8],
    regions: &[(String, std::ops::Range<usize>)],
    rng: &mut Seeded,
) -> (Vec<u8>, String) {
    let mut bytes = good.to_vec();
    let (name, range) = &regions[rng.below(regions.len())];
    let count = 1 + rng.below(8);
    for _ in 0..count {
        let at = range.start + rng.below(range.len());
        bytes[at] = rng.next() as u8;
    }
    (bytes, format!("{count} bytes of the {name}"))
}

#[test]
fn two_thousand_damaged_builds_go_through_load_and_upgrade_and_the_host_survives() {
    // A plugin build without its debug sections (which no loader reads), so that damage
    // lands where it matters and each copy is small.
    let dir = plugin_dir();
    let stripped = dir.path().join("hello-stripped.so");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(plugin_library("epi-plugin-hello"))
        .arg(&stripped)
        .status()
        .expect(
            "this test strips a build with objcopy: install binutils (apt-get install binutils)",
        );
    assert!(status.success());
    let good = std::fs::read(&stripped).unwrap();
    std::fs::remove_file(&stripped).unwrap();
    let regions = regions(&good);

    // Retired versions are closed, so that their finalisers run in the round that loaded
    // them rather than at exit.
    let registry = registry_with(RegistryConfig {
        retire: epi::RetirePolicy::Unload,
        ..Default::default()
    });
    let served = dir.path().join("hello.so");
    publish_by_rename(&served, &good);
    registry.load(&served).expect("the stripped build loads");
    let greet = registry.function::<String, String>("greeting", "greet");

    let mut rng = Seeded(0x0005_eed0_fe91);
    let (mut refused, mut loaded, mut probe_refusals) = (0, 0, 0);
    let started = Instant::now();
    for round in 0..2000 {
        let (bytes, what) = mutate(&good, &regions, &mut rng);
        if std::env::var_os("EPI_TEST_TRACE").is_some() {
            eprintln!("round {round}: {what}");
        }
        let result = if round % 2 == 0 {
            // A new file beside the running plugin.
            let name = format!("damaged-{round}.so");
            let path = write_file(dir.path(), &name, &bytes);
            let result = registry.load(&path).map(|info| {
                // Loaded although damaged (the damage missed what runs): unload it before
                // the next round.
                registry.unload_file(&path);
                Upgrade::Loaded(info)
            });
            std::fs::remove_file(&path).unwrap();
            result.map_err(|err| (err, name))
        } else {
            // An upgrade of the running plugin's file.
            publish_by_rename(&served, &bytes);
            let result = registry.upgrade(&served);
            if matches!(result, Ok(Upgrade::Replaced { .. })) {
                publish_by_rename(&served, &good);
                registry.upgrade(&served).expect("back to the good build");
            }
            result.map_err(|err| (err, "hello.so".to_owned()))
        };
        match result {
            Ok(_) => loaded += 1,
            Err((err, name)) => {
                refused += 1;
                probe_refusals += matches!(err, LoadError::ProbeFailed { .. }) as usize;
                let text = err.to_string();
                assert!(text.contains(&name), "round {round} ({what}): {text}");
            }
        }
    }
    publish_by_rename(&served, &good);
    let _ = registry.upgrade(&served);
    assert_eq!(
        greet.apply(&"Ada".into()).unwrap(),
        vec!["Hello, Ada!"],
        "the host serves after 2,000 damaged files"
    );
    eprintln!(
        "2,000 damaged builds in {:.1} s: {refused} refused ({probe_refusals} by the probe), {loaded} loaded or upgraded",
        started.elapsed().as_secs_f64()
    );
    assert!(
        probe_refusals > 0,
        "no damage crashed a probe: the mutations miss"
    );
}

/// Set in the child process of the next test, which runs a host that dies.
const DYING_HOST: &str = "EPI_TEST_DYING_HOST";

/// Runs `test` of this binary again in a child process with [`DYING_HOST`] set to
/// `behaviour`; returns how it ended and its stderr.
fn run_dying_host(test: &str, behaviour: &str) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(DYING_HOST, behaviour)
        .output()
        .unwrap();
    (
        output.status.signal(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// In the child: a host reading a data callback that aborts.
fn die_in_callback() -> ! {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &serde_json::json!({"app": "crashy", "data": [{"service": "cfg", "key": "k", "callback": true, "interval_ms": 600000}]}),
        )
        .unwrap();
    registry
        .service("probe")
        .apply::<String, ()>("set_callback_behaviour", &"abort".to_string())
        .unwrap();
    registry.reload_data();
    unreachable!("the callback kills the process");
}

#[test]
fn a_data_callback_that_aborts_is_named_on_stderr_as_the_host_dies() {
    if std::env::var_os(DYING_HOST).is_some() {
        die_in_callback();
    }
    let test = "a_data_callback_that_aborts_is_named_on_stderr_as_the_host_dies";
    let (signal, stderr) = run_dying_host(test, "abort");
    assert_eq!(signal, Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains(
            "epi: fatal signal SIGABRT (abort) while running plugin `crashy`: the data callback of cfg/k"
        ),
        "{stderr}"
    );
}

/// In the child: a host calling a provider that kills the process.
fn die_in_provider(behaviour: &str) -> ! {
    let registry = registry(&[]);
    load_testplug(
        &registry,
        "crashy",
        serde_json::json!([{"label": "boom", "add": 1, "behaviour": behaviour}]),
    );
    let _ = registry.function::<i64, i64>("math", "value").apply(&1);
    unreachable!("the provider kills the process");
}

#[test]
fn a_provider_that_aborts_or_overflows_its_stack_is_named_on_stderr_as_the_host_dies() {
    if let Some(behaviour) = std::env::var_os(DYING_HOST) {
        die_in_provider(&behaviour.to_string_lossy());
    }
    let test = "a_provider_that_aborts_or_overflows_its_stack_is_named_on_stderr_as_the_host_dies";
    let named = "while running plugin `crashy`, provider `boom`, function `math.value`";
    let (signal, stderr) = run_dying_host(test, "abort");
    assert_eq!(signal, Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains(&format!("epi: fatal signal SIGABRT (abort) {named}")),
        "{stderr}"
    );
    // Rust's own report of the overflow still comes (the handler before ours is chained).
    let (signal, stderr) = run_dying_host(test, "overflow");
    assert!(signal.is_some(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "epi: fatal signal SIGSEGV (invalid memory access) {named}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("has overflowed its stack"), "{stderr}");
}
