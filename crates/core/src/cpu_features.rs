//! Which CPU flags a snapshot can depend on.
//!
//! `/proc/cpuinfo` lists kernel and virtualisation details beside instruction-set features.
//! Only the features a user program can use (and so may have baked into its state, through
//! `ifunc` resolution or JIT code) take part in compatibility.

use std::collections::BTreeSet;

/// x86 flags (as `/proc/cpuinfo` spells them) that user programs can see and use.
pub const X86_USER_FEATURES: &[&str] = &[
    "3dnowprefetch",
    "abm",
    "adx",
    "aes",
    "amx_bf16",
    "amx_fp16",
    "amx_int8",
    "amx_tile",
    "avx",
    "avx2",
    "avx512_bf16",
    "avx512_bitalg",
    "avx512_fp16",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_vp2intersect",
    "avx512_vpopcntdq",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512f",
    "avx512ifma",
    "avx512vbmi",
    "avx512vl",
    "avx_ifma",
    "avx_ne_convert",
    "avx_vnni",
    "avx_vnni_int8",
    "bmi1",
    "bmi2",
    "clflushopt",
    "clwb",
    "clzero",
    "cmov",
    "cx16",
    "cx8",
    "erms",
    "f16c",
    "fma",
    "fma4",
    "fsgsbase",
    "fsrm",
    "fxsr",
    "gfni",
    "hle",
    "lahf_lm",
    "lm",
    "misalignsse",
    "mmx",
    "mmxext",
    "movbe",
    "movdir64b",
    "movdiri",
    "ospke",
    "pclmulqdq",
    "pku",
    "pni",
    "popcnt",
    "rdpid",
    "rdrand",
    "rdseed",
    "rdtscp",
    "rtm",
    "serialize",
    "sha512",
    "sha_ni",
    "sm3",
    "sm4",
    "sse",
    "sse2",
    "sse4_1",
    "sse4_2",
    "sse4a",
    "ssse3",
    "tbm",
    "vaes",
    "vpclmulqdq",
    "waitpkg",
    "xgetbv1",
    "xop",
    "xsave",
    "xsavec",
    "xsaveopt",
];

/// Arm `Features` entries that say nothing about the instruction set.
const ARM_NON_ISA: &[&str] = &["evtstrm", "cpuid"];

/// The features in `flags` that a snapshot can depend on, for architecture `arch`.
pub fn user_visible_features<'a>(
    arch: &str,
    flags: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    flags
        .into_iter()
        .filter(|f| match arch {
            "x86_64" | "x86" => X86_USER_FEATURES.binary_search(f).is_ok(),
            _ => !ARM_NON_ISA.contains(f),
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_for_binary_search() {
        let mut sorted = X86_USER_FEATURES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, X86_USER_FEATURES);
    }

    #[test]
    fn keeps_isa_features_and_drops_the_rest() {
        let flags = "fpu vme sse sse2 hypervisor avx2 rep_good tsc_known_freq aes nopl".split(' ');
        let kept = user_visible_features("x86_64", flags);
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            vec!["aes", "avx2", "sse", "sse2"]
        );
        let arm = user_visible_features("aarch64", "fp asimd evtstrm aes cpuid sve".split(' '));
        assert_eq!(
            arm.into_iter().collect::<Vec<_>>(),
            vec!["aes", "asimd", "fp", "sve"]
        );
    }
}
