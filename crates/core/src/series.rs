//! Machine series: the CPU micro-architecture generation a snapshot is tied to, derived from
//! the CPU vendor, family and model (x86) or implementer and part (Arm).
//!
//! Two CPUs of one series run the same instructions with the same behaviour, so process state
//! moves between them; CPU count and clock speed may differ. Unknown CPUs get a precise
//! fallback name (`intel-family6-model999`) so they still match only their own kind.

/// The machine series of a CPU.
pub fn machine_series(vendor: &str, family: u32, model: u32) -> String {
    let named = match vendor {
        "GenuineIntel" if family == 6 => intel_family6(model),
        "AuthenticAMD" | "HygonGenuine" => amd(family, model),
        "ARM" | "arm" => arm(family, model),
        _ => None,
    };
    match named {
        Some(name) => name.to_owned(),
        None => {
            let vendor = match vendor {
                "GenuineIntel" => "intel",
                "AuthenticAMD" => "amd",
                "" => "unknown",
                other => other,
            };
            format!(
                "{}-family{family}-model{model}",
                vendor.to_ascii_lowercase()
            )
        }
    }
}

fn intel_family6(model: u32) -> Option<&'static str> {
    Some(match model {
        0x2D => "intel-sandybridge-ep",
        0x3E => "intel-ivybridge-ep",
        0x3F => "intel-haswell-server",
        0x4F | 0x56 => "intel-broadwell-server",
        // Skylake-SP and Cascade Lake share the model number (stepping differs).
        0x55 => "intel-skylake-server",
        0x6A | 0x6C => "intel-icelake-server",
        0x8F => "intel-sapphirerapids",
        0xCF => "intel-emeraldrapids",
        0xAD | 0xAE => "intel-graniterapids",
        0xAF => "intel-sierraforest",
        0x4E | 0x5E => "intel-skylake",
        0x8E | 0x9E => "intel-kabylake",
        0x7D | 0x7E => "intel-icelake",
        0x8C | 0x8D => "intel-tigerlake",
        0x97 | 0x9A => "intel-alderlake",
        0xB7 | 0xBA | 0xBF => "intel-raptorlake",
        0xAA | 0xAC => "intel-meteorlake",
        _ => return None,
    })
}

fn amd(family: u32, model: u32) -> Option<&'static str> {
    Some(match (family, model) {
        (0x17, 0x00..=0x2F) => "amd-zen",
        (0x17, 0x30..=0xFF) => "amd-zen2",
        (0x19, 0x00..=0x0F) | (0x19, 0x20..=0x5F) => "amd-zen3",
        (0x19, 0x10..=0x1F) | (0x19, 0x60..=0xAF) => "amd-zen4",
        (0x1A, _) => "amd-zen5",
        _ => return None,
    })
}

/// For Arm, `family` is the implementer code and `model` the part number.
fn arm(implementer: u32, part: u32) -> Option<&'static str> {
    Some(match (implementer, part) {
        (0x41, 0xD0C) => "arm-neoverse-n1",
        (0x41, 0xD40) => "arm-neoverse-v1",
        (0x41, 0xD49) => "arm-neoverse-n2",
        (0x41, 0xD4F) => "arm-neoverse-v2",
        (0x41, 0xD8E) => "arm-neoverse-n3",
        (0x41, 0xD84) => "arm-neoverse-v3",
        (0xC0, 0xAC3) => "ampere-one",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cpus_map_to_their_generation() {
        assert_eq!(machine_series("AuthenticAMD", 25, 1), "amd-zen3");
        assert_eq!(machine_series("AuthenticAMD", 25, 0x11), "amd-zen4");
        assert_eq!(machine_series("AuthenticAMD", 23, 0x31), "amd-zen2");
        assert_eq!(machine_series("AuthenticAMD", 26, 2), "amd-zen5");
        assert_eq!(
            machine_series("GenuineIntel", 6, 0x8F),
            "intel-sapphirerapids"
        );
        assert_eq!(
            machine_series("GenuineIntel", 6, 0x6A),
            "intel-icelake-server"
        );
        assert_eq!(
            machine_series("GenuineIntel", 6, 0x55),
            "intel-skylake-server"
        );
        assert_eq!(machine_series("ARM", 0x41, 0xD4F), "arm-neoverse-v2");
    }

    #[test]
    fn unknown_cpus_keep_their_identity() {
        assert_eq!(
            machine_series("GenuineIntel", 6, 999),
            "intel-family6-model999"
        );
        assert_eq!(
            machine_series("GenuineIntel", 19, 1),
            "intel-family19-model1"
        );
        assert_eq!(machine_series("", 0, 0), "unknown-family0-model0");
        assert_ne!(
            machine_series("GenuineIntel", 6, 998),
            machine_series("GenuineIntel", 6, 999)
        );
    }
}
