//! Which of llama.cpp's CPU backend builds this machine may run (`cpu-variants` builds).
//!
//! ggml scores its x86 variants by CPUID alone ("does not check for OS support"), so on a VM whose
//! CPU reports AVX-512 or AMX while the OS has not enabled their register state, it would load a
//! module that dies with SIGILL. Ferry decides instead: a feature counts only when the CPU has it
//! *and* the OS enabled it (XCR0, which `is_x86_feature_detected!` checks for AVX and AVX-512; for
//! AMX also Linux's per-process permission), and only the best allowed module is loaded.
//!
//! AMX is used only with `FERRY_LLM_CPU_AMX=1` (see [`usable`]); `FERRY_LLM_CPU_VARIANT=<name>`
//! forces one variant (e.g. `haswell` to compare builds).
//!
//! Architecture invariant: pure detection and choice; loading is the engine's business.

/// x86 features that distinguish ggml's CPU variants, with ggml's own score weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feat {
    Fma = 1,
    F16c = 1 << 1,
    Sse42 = 1 << 2,
    Bmi2 = 1 << 3,
    Avx = 1 << 4,
    Avx2 = 1 << 5,
    AvxVnni = 1 << 6,
    Avx512 = 1 << 7,
    Avx512Vbmi = 1 << 8,
    Avx512Bf16 = 1 << 9,
    Avx512Vnni = 1 << 10,
    Amx = 1 << 11,
}

use Feat::*;

const HASWELL: &[Feat] = &[Sse42, Avx, F16c, Fma, Avx2, Bmi2];

/// ggml's x86 variants (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS) and what each needs.
pub fn variant_features(name: &str) -> Option<Vec<Feat>> {
    let with = |extra: &[Feat]| HASWELL.iter().chain(extra).copied().collect::<Vec<_>>();
    Some(match name {
        "x64" => vec![],
        "sse42" => vec![Sse42],
        "sandybridge" => vec![Sse42, Avx],
        "ivybridge" => vec![Sse42, Avx, F16c],
        "piledriver" => vec![Sse42, Avx, F16c, Fma],
        "haswell" => with(&[]),
        "skylakex" => with(&[Avx512]),
        "cannonlake" => with(&[Avx512, Avx512Vbmi]),
        "cascadelake" => with(&[Avx512, Avx512Vnni]),
        "icelake" => with(&[Avx512, Avx512Vbmi, Avx512Vnni]),
        "cooperlake" => with(&[Avx512, Avx512Vnni, Avx512Bf16]),
        "zen4" => with(&[Avx512, Avx512Vbmi, Avx512Vnni, Avx512Bf16]),
        "alderlake" => with(&[AvxVnni]),
        "sapphirerapids" => with(&[Avx512, Avx512Vbmi, Avx512Vnni, Avx512Bf16, Amx]),
        _ => return None,
    })
}

/// Whether the CPU has `f` and the OS lets this process use it.
#[cfg(target_arch = "x86_64")]
pub fn usable(f: Feat) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match f {
        Fma => has!("fma"),
        F16c => has!("f16c"),
        Sse42 => has!("sse4.2"),
        Bmi2 => has!("bmi2"),
        Avx => has!("avx"),
        Avx2 => has!("avx2"),
        AvxVnni => has!("avxvnni"),
        Avx512 => has!("avx512f") && has!("avx512cd") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw"),
        Avx512Vbmi => has!("avx512vbmi"),
        Avx512Bf16 => has!("avx512bf16"),
        Avx512Vnni => has!("avx512vnni"),
        // Opt-in: on the development VM (Sapphire Rapids, 2 vCPUs) CPUID, XCR0, the kernel's
        // permission and a tile-instruction probe all say yes, and ggml's AMX matmul still dies
        // with SIGILL (TILEZERO in tinygemm_kernel_amx). AVX-512 VNNI/BF16 is used instead.
        Amx => std::env::var_os("FERRY_LLM_CPU_AMX").is_some_and(|v| v == "1") && amx_usable(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn usable(_: Feat) -> bool {
    false
}

/// AMX: CPUID says AMX-TILE and AMX-INT8, XCR0 has the tile config and data state enabled, and
/// (Linux) the kernel grants this process the tile data state.
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if !std::arch::is_x86_feature_detected!("xsave") {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    if leaf7.edx & (1 << 24) == 0 || leaf7.edx & (1 << 25) == 0 {
        return false;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx = 0 reads XCR0; OSXSAVE is implied by the xsave check above.
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    let xcr0 = ((hi as u64) << 32) | lo as u64;
    if xcr0 & (3 << 17) != 3 << 17 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        if unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } != 0 {
            return false;
        }
        // Some hypervisors report and even "enable" AMX and still fault on tile instructions
        // (seen on a 2-core Sapphire Rapids VM): run a few in a child process and see it survive.
        return amx_probe();
    }
    #[allow(unreachable_code)]
    true
}

/// Executes LDTILECFG, TILEZERO and TILERELEASE in a forked child; true when it exits normally.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_probe() -> bool {
    use std::sync::OnceLock;
    static RESULT: OnceLock<bool> = OnceLock::new();
    *RESULT.get_or_init(|| {
        // Palette 1, tile 0: one row of 4 bytes (bytes 16.. are colsb, 48.. are rows).
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        cfg[16] = 4;
        cfg[48] = 1;
        // SAFETY: the child only runs the instructions and `_exit`s (async-signal-safe), the parent waits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                std::arch::asm!("ldtilecfg [{0}]", "tilezero tmm0", "tilerelease", in(reg) cfg.as_ptr(), options(nostack));
                libc::_exit(0);
            }
            if pid < 0 {
                return false;
            }
            let mut status = 0;
            if libc::waitpid(pid, &mut status, 0) != pid {
                return false;
            }
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    })
}

/// ggml's score for a variant on this machine: 0 when it may not run, else higher is better.
pub fn score(name: &str, usable: impl Fn(Feat) -> bool) -> u32 {
    match variant_features(name) {
        Some(fs) if fs.iter().all(|&f| usable(f)) => 1 + fs.iter().map(|&f| f as u32).sum::<u32>(),
        _ => 0,
    }
}

/// The best `libggml-cpu-<variant>.so` among `files` (file names) for a machine with `usable`.
pub fn best<'a>(files: impl IntoIterator<Item = &'a str>, usable: impl Fn(Feat) -> bool + Copy) -> Option<&'a str> {
    files
        .into_iter()
        .filter_map(|f| {
            let v = f.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
            let s = score(v, usable);
            (s > 0).then_some((s, f))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        "libggml-cpu-x64.so", "libggml-cpu-sse42.so", "libggml-cpu-sandybridge.so", "libggml-cpu-ivybridge.so",
        "libggml-cpu-piledriver.so", "libggml-cpu-haswell.so", "libggml-cpu-skylakex.so", "libggml-cpu-cannonlake.so",
        "libggml-cpu-cascadelake.so", "libggml-cpu-icelake.so", "libggml-cpu-cooperlake.so", "libggml-cpu-zen4.so",
        "libggml-cpu-alderlake.so", "libggml-cpu-sapphirerapids.so",
    ];

    #[test]
    fn picks_the_best_variant_the_os_allows() {
        // Everything enabled: AMX.
        assert_eq!(best(ALL.iter().copied(), |_| true), Some("libggml-cpu-sapphirerapids.so"));
        // A Sapphire Rapids VM whose OS has not enabled AMX state: AVX-512 with BF16/VNNI/VBMI.
        assert_eq!(best(ALL.iter().copied(), |f| f != Amx), Some("libggml-cpu-zen4.so"));
        // CPUID says AVX-512 but the OS did not enable the ZMM state: AVX2 + AVX-VNNI at most.
        let no512 = |f: Feat| !matches!(f, Avx512 | Avx512Vbmi | Avx512Bf16 | Avx512Vnni | Amx);
        assert_eq!(best(ALL.iter().copied(), no512), Some("libggml-cpu-alderlake.so"));
        // Nothing but SSE2: the baseline build.
        assert_eq!(best(ALL.iter().copied(), |_| false), Some("libggml-cpu-x64.so"));
        assert_eq!(best(["libggml-base.so", "libggml-cpu-x64.so"], |_| true), Some("libggml-cpu-x64.so"));
        assert_eq!(best(["libggml-cpu-unknown.so"], |_| true), None);
    }

    #[test]
    fn this_machine_runs_at_least_the_baseline() {
        assert!(score("x64", usable) > 0);
    }
}
