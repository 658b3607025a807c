//! Platforms (`os/arch[/variant]`) and choosing the manifest of an OCI index or
//! Docker manifest list that fits the host. Errors come back as
//! [`RegistryError::NoMatchingPlatform`], naming the image and what it offers.

use std::fmt;
use std::str::FromStr;

use berth_core::image_ref::ImageRef;
use oci_spec::image::{Descriptor, ImageIndex};

use super::RegistryError;

/// An `os/architecture[/variant]` triple in Go's GOOS/GOARCH names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// The platform of the running host (`linux/amd64`, `linux/arm64/v8`, …).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    fn of_descriptor(d: &Descriptor) -> Option<Platform> {
        let p = d.platform().as_ref()?;
        Some(Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone().filter(|v| !v.is_empty()),
        })
    }

    /// Whether an image built for `offered` runs here; `Some(exact)` when it does.
    fn matches(&self, offered: &Platform) -> Option<bool> {
        if self.os != offered.os || self.architecture != offered.architecture {
            return None;
        }
        match (&self.variant, &offered.variant) {
            (Some(w), Some(o)) if w == o => Some(true),
            (_, None) => Some(false),
            (None, Some(_)) => Some(false),
            (Some(_), Some(_)) => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform::new(os, arch, None)),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform::new(os, arch, Some(v)))
            }
            _ => Err(format!("platform `{s}` is not os/arch[/variant]")),
        }
    }
}

/// Picks the manifest for `wanted` from `index`: an exact variant match first,
/// then an entry without a variant (or any variant when none is wanted).
pub fn select_platform<'a>(
    image: &ImageRef,
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    let mut fallback = None;
    for d in index.manifests() {
        let Some(p) = Platform::of_descriptor(d) else {
            continue;
        };
        match wanted.matches(&p) {
            Some(true) => return Ok(d),
            Some(false) if fallback.is_none() => fallback = Some(d),
            _ => {}
        }
    }
    fallback.ok_or_else(|| {
        let mut available: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(Platform::of_descriptor)
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_string())
            .collect();
        available.dedup();
        RegistryError::NoMatchingPlatform {
            image: image.to_string(),
            wanted: wanted.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn index(platforms: &[&str]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p: Platform = p.parse().unwrap();
                let mut plat = serde_json::json!({"os": p.os, "architecture": p.architecture});
                if let Some(v) = p.variant {
                    plat["variant"] = v.into();
                }
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{:064x}", i + 1),
                    "size": 100,
                    "platform": plat,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    #[test]
    fn picks_host_like_platforms() {
        let img = ImageRef::parse("127.0.0.1:5000/app:1").unwrap();
        let idx = index(&[
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/amd64",
            "unknown/unknown",
        ]);
        let d = select_platform(&img, &idx, &"linux/amd64".parse().unwrap()).unwrap();
        assert!(d.digest().to_string().ends_with("3"));
        let d = select_platform(&img, &idx, &"linux/arm64/v8".parse().unwrap()).unwrap();
        assert!(d.digest().to_string().ends_with("2"));
        let idx2 = index(&["linux/arm64"]);
        assert!(select_platform(&img, &idx2, &"linux/arm64/v8".parse().unwrap()).is_ok());
        let err = select_platform(&img, &idx, &"linux/s390x".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("127.0.0.1:5000/app:1"), "{err}");
        assert!(
            err.contains("linux/s390x")
                && err.contains("linux/arm/v7, linux/arm64/v8, linux/amd64"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
        assert!(select_platform(&img, &idx, &"linux/arm/v6".parse().unwrap()).is_err());
        assert_eq!(Platform::host().os, "linux");
    }
}
