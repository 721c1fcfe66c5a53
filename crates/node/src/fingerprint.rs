//! Probing the node fingerprint from `/proc`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use podsnap_api::{CpuInfo, EngineInfo, GpuInfo, NodeFingerprint};
use podsnap_core::{cpu_features::user_visible_features, machine_series};

use crate::runsc::RunscInfo;

/// Where host files are read from: `/` on a real node, a fake tree in tests.
#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
    arch: String,
}

impl Default for HostRoot {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

impl HostRoot {
    /// A fake host under `root` with architecture `arch`.
    pub fn new(root: impl Into<PathBuf>, arch: &str) -> Self {
        Self {
            root: root.into(),
            arch: arch.to_owned(),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn read(&self, relative: &str) -> Result<String, ProbeError> {
        let path = self.path(relative);
        fs::read_to_string(&path).map_err(|source| ProbeError::Read { path, source })
    }
}

/// Which engine the fingerprint is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// gVisor through runsc; `None` when runsc is not installed.
    Gvisor(Option<RunscInfo>),
    /// podsnap's native engine (versioned by the host kernel).
    Native,
}

/// Why the fingerprint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A host file could not be read.
    #[error("cannot read {path}: {source}; podsnap needs /proc mounted to describe this node")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `/proc/cpuinfo` lacks a field.
    #[error("/proc/cpuinfo has no `{0}` field; this CPU or kernel is not supported yet")]
    CpuInfoField(&'static str),
    /// The gvisor engine was asked for but runsc is missing.
    #[error(
        "runsc is not installed or `runsc --version` fails, so the gvisor engine is unavailable; install it with `apt-get install -y runsc` (or reinstall it), or use `--engine native`"
    )]
    RunscMissing,
}

/// Reads this node's fingerprint for `engine`.
pub fn probe_fingerprint(
    host: &HostRoot,
    engine: &EngineKind,
) -> Result<NodeFingerprint, ProbeError> {
    let cpuinfo = host.read("proc/cpuinfo")?;
    let first = first_processor(&cpuinfo);
    let (cpu, flags) = cpu_identity(&host.arch, &first)?;
    let kernel_release = host.read("proc/sys/kernel/osrelease")?.trim().to_owned();
    let engine = match engine {
        EngineKind::Gvisor(Some(runsc)) => EngineInfo {
            name: "gvisor".into(),
            version: runsc.version.clone(),
        },
        EngineKind::Gvisor(None) => return Err(ProbeError::RunscMissing),
        EngineKind::Native => EngineInfo {
            name: "native".into(),
            version: kernel_release.clone(),
        },
    };
    Ok(NodeFingerprint {
        cpu_features: user_visible_features(&host.arch, flags.split_whitespace()),
        architecture: host.arch.clone(),
        cpu,
        kernel_release,
        engine,
        gpus: probe_gpus(host),
    })
}

/// The `key: value` fields of the first processor block of `/proc/cpuinfo`.
fn first_processor(cpuinfo: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in cpuinfo.lines() {
        if line.trim().is_empty() && !fields.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields
                .entry(key.trim().to_owned())
                .or_insert_with(|| value.trim().to_owned());
        }
    }
    fields
}

fn cpu_identity(
    arch: &str,
    fields: &BTreeMap<String, String>,
) -> Result<(CpuInfo, String), ProbeError> {
    let get = |key: &'static str| {
        fields
            .get(key)
            .cloned()
            .ok_or(ProbeError::CpuInfoField(key))
    };
    let number = |text: &str| {
        let t = text.trim();
        t.strip_prefix("0x")
            .map_or_else(|| t.parse().ok(), |hex| u32::from_str_radix(hex, 16).ok())
            .unwrap_or(0)
    };
    if arch == "x86_64" || arch == "x86" {
        let vendor = get("vendor_id")?;
        let family = number(&get("cpu family")?);
        let model = number(&get("model")?);
        let cpu = CpuInfo {
            machine_series: machine_series(&vendor, family, model),
            vendor,
            family,
            model,
            model_name: fields.get("model name").cloned().unwrap_or_default(),
        };
        Ok((cpu, get("flags")?))
    } else {
        let implementer = number(&get("CPU implementer")?);
        let part = number(&get("CPU part")?);
        let cpu = CpuInfo {
            machine_series: machine_series("ARM", implementer, part),
            vendor: "ARM".into(),
            family: implementer,
            model: part,
            model_name: String::new(),
        };
        Ok((cpu, get("Features")?))
    }
}

/// GPUs from the NVIDIA kernel driver's `/proc` files; empty without the driver.
fn probe_gpus(host: &HostRoot) -> Vec<GpuInfo> {
    let Ok(version) = host.read("proc/driver/nvidia/version") else {
        return Vec::new();
    };
    let driver_version = parse_nvidia_driver_version(&version).unwrap_or_default();
    let Ok(entries) = fs::read_dir(host.path("proc/driver/nvidia/gpus")) else {
        return Vec::new();
    };
    let mut gpus: Vec<GpuInfo> = entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Model:"))
                .map(|m| GpuInfo {
                    model: m.trim().to_owned(),
                    driver_version: driver_version.clone(),
                })
        })
        .collect();
    gpus.sort();
    gpus
}

/// The version in `NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Tue ...`.
fn parse_nvidia_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    let after = line.split("Kernel Module").nth(1)?;
    after.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
        dir
    }

    const ZEN3: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx avx2 hypervisor aes\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n";

    #[test]
    fn reads_an_x86_node() {
        let dir = fake_host(&[
            ("proc/cpuinfo", ZEN3),
            ("proc/sys/kernel/osrelease", "6.18.44-fc\n"),
        ]);
        let host = HostRoot::new(dir.path(), "x86_64");
        let fp = probe_fingerprint(&host, &EngineKind::Native).unwrap();
        assert_eq!(fp.architecture, "x86_64");
        assert_eq!(fp.cpu.machine_series, "amd-zen3");
        assert_eq!(fp.cpu.model_name, "AMD EPYC 7B13");
        assert_eq!(fp.kernel_release, "6.18.44-fc");
        assert_eq!(fp.engine.name, "native");
        assert_eq!(fp.engine.version, "6.18.44-fc");
        assert!(fp.cpu_features.contains("avx2") && !fp.cpu_features.contains("hypervisor"));
        assert!(fp.gpus.is_empty());
    }

    #[test]
    fn reads_an_arm_node() {
        let cpuinfo = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve2\nCPU implementer\t: 0x41\nCPU part\t: 0xd4f\n";
        let dir = fake_host(&[
            ("proc/cpuinfo", cpuinfo),
            ("proc/sys/kernel/osrelease", "6.8.0\n"),
        ]);
        let host = HostRoot::new(dir.path(), "aarch64");
        let fp = probe_fingerprint(&host, &EngineKind::Native).unwrap();
        assert_eq!(fp.cpu.machine_series, "arm-neoverse-v2");
        assert!(fp.cpu_features.contains("sve2") && !fp.cpu_features.contains("evtstrm"));
    }

    #[test]
    fn reads_nvidia_gpus_without_libcuda() {
        let dir = fake_host(&[
            ("proc/cpuinfo", ZEN3),
            ("proc/sys/kernel/osrelease", "6.8.0\n"),
            (
                "proc/driver/nvidia/version",
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Tue Jan  7 2025\nGCC version: gcc 12\n",
            ),
            (
                "proc/driver/nvidia/gpus/0000:00:04.0/information",
                "Model: \t\t NVIDIA H200\nIRQ: 33\n",
            ),
            (
                "proc/driver/nvidia/gpus/0000:00:05.0/information",
                "Model: \t\t NVIDIA H200\nIRQ: 34\n",
            ),
        ]);
        let host = HostRoot::new(dir.path(), "x86_64");
        let runsc = RunscInfo {
            path: "/usr/bin/runsc".into(),
            version: "release-20221219.0".into(),
        };
        let fp = probe_fingerprint(&host, &EngineKind::Gvisor(Some(runsc))).unwrap();
        assert_eq!(fp.engine.version, "release-20221219.0");
        assert_eq!(fp.gpus.len(), 2);
        assert_eq!(fp.gpus[0].model, "NVIDIA H200");
        assert_eq!(fp.gpus[0].driver_version, "570.86.15");
    }

    #[test]
    fn missing_files_and_runsc_are_clear_errors() {
        let dir = fake_host(&[]);
        let host = HostRoot::new(dir.path(), "x86_64");
        let err = probe_fingerprint(&host, &EngineKind::Native).unwrap_err();
        assert!(err.to_string().contains("proc/cpuinfo"), "{err}");
        let dir = fake_host(&[
            ("proc/cpuinfo", ZEN3),
            ("proc/sys/kernel/osrelease", "6.8.0\n"),
        ]);
        let host = HostRoot::new(dir.path(), "x86_64");
        let err = probe_fingerprint(&host, &EngineKind::Gvisor(None)).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install -y runsc"),
            "{err}"
        );
        let dir = fake_host(&[
            ("proc/cpuinfo", "processor : 0\n"),
            ("proc/sys/kernel/osrelease", "6.8.0\n"),
        ]);
        let err = probe_fingerprint(&HostRoot::new(dir.path(), "x86_64"), &EngineKind::Native)
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::CpuInfoField("vendor_id")),
            "{err}"
        );
    }

    #[test]
    fn this_machine_has_a_fingerprint() {
        let fp = probe_fingerprint(&HostRoot::default(), &EngineKind::Native).unwrap();
        assert_eq!(fp.architecture, std::env::consts::ARCH);
        assert!(!fp.kernel_release.is_empty());
        assert!(!fp.cpu.machine_series.is_empty());
    }
}
