//! Modal's GPU names and the host cards each one accepts.
//!
//! Modal names a card by a short type (`T4`, `L4`, `A10G`, `A100-40GB`, `A100-80GB`, `L40S`,
//! `H100`, `H200`, `B200`); the client upper-cases what the user wrote and sends it with a
//! count (`"A10G:2"` → `A10G`, 2). NVML names cards by their marketing name (`NVIDIA H200`,
//! `NVIDIA A100-SXM4-80GB`, `Tesla T4`). [`modal_name`] maps the second to the first; an
//! operator maps the rest with [`GpuAliases`].

use std::fmt;

use crate::GpuError;

/// The types Modal offers, as the client sends them.
pub const MODAL_GPU_TYPES: &[&str] = &["T4", "L4", "A10G", "A100-40GB", "A100-80GB", "L40S", "H100", "H200", "B200"];

/// Cards above this much memory are the 80 GB A100 when NVML's name does not say.
const A100_80GB_THRESHOLD: u64 = 50 << 30;

/// Modal's name for a host card, from NVML's name (and its memory, for an A100 whose name
/// does not carry the size). `None` for cards Modal does not offer (map them with aliases).
///
/// ```
/// use ferry_gpu::names::modal_name;
/// assert_eq!(modal_name("NVIDIA H200", None), Some("H200"));
/// assert_eq!(modal_name("NVIDIA A100-SXM4-80GB", None), Some("A100-80GB"));
/// assert_eq!(modal_name("NVIDIA RTX 6000 Ada Generation", None), None);
/// ```
pub fn modal_name(nvml_name: &str, memory_bytes: Option<u64>) -> Option<&'static str> {
    let upper = nvml_name.to_ascii_uppercase();
    let words: Vec<&str> = upper.split(|c: char| c.is_whitespace() || c == '-').filter(|w| !w.is_empty()).collect();
    let has = |w: &str| words.iter().any(|x| *x == w);
    if has("B200") {
        Some("B200")
    } else if has("H200") {
        Some("H200")
    } else if has("H100") {
        Some("H100")
    } else if has("A100") {
        let big = if upper.contains("80GB") {
            true
        } else if upper.contains("40GB") {
            false
        } else {
            memory_bytes.is_some_and(|m| m > A100_80GB_THRESHOLD)
        };
        Some(if big { "A100-80GB" } else { "A100-40GB" })
    } else if has("L40S") {
        Some("L40S")
    } else if has("L4") {
        Some("L4")
    } else if has("A10G") || has("A10") {
        // The A10G is the cloud variant of the A10 (same chip and memory).
        Some("A10G")
    } else if has("T4") {
        Some("T4")
    } else {
        None
    }
}

/// The operator's names for cards Modal does not name (or a different choice for those it
/// does): NVML name → the GPU type requests use, e.g.
/// `NVIDIA RTX 6000 Ada Generation=L40S`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuAliases {
    entries: Vec<(String, String)>,
}

impl GpuAliases {
    /// One `NVML NAME=TYPE` entry, as `ferry serve --gpu-alias` takes it.
    pub fn add(&mut self, entry: &str) -> Result<(), GpuError> {
        let (card, label) = entry
            .rsplit_once('=')
            .map(|(c, l)| (c.trim(), l.trim()))
            .filter(|(c, l)| !c.is_empty() && !l.is_empty())
            .ok_or_else(|| GpuError::Invalid(format!("GPU alias `{entry}` must look like `NVIDIA RTX 6000 Ada Generation=L40S`")))?;
        self.entries.push((card.to_string(), label.to_ascii_uppercase()));
        Ok(())
    }

    /// Entries from a file: one `NVML NAME=TYPE` per line; blank lines and `#` comments skipped.
    pub fn add_file(&mut self, text: &str) -> Result<(), GpuError> {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            self.add(line)?;
        }
        Ok(())
    }

    /// The GPU type a card answers to: the operator's alias first, else Modal's name.
    pub fn label(&self, nvml_name: &str, memory_bytes: Option<u64>) -> Option<String> {
        self.entries
            .iter()
            .rev()
            .find(|(card, _)| card.eq_ignore_ascii_case(nvml_name.trim()))
            .map(|(_, label)| label.clone())
            .or_else(|| modal_name(nvml_name, memory_bytes).map(str::to_string))
    }
}

/// One `gpu=` value: a type and a count of whole cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRequest {
    /// Upper-case, as the client sends it (`H100`, `A100-80GB`, `H100!`, `ANY`).
    pub name: String,
    pub count: u32,
}

impl GpuRequest {
    pub fn new(name: &str, count: u32) -> Result<Self, GpuError> {
        let name = name.trim().to_ascii_uppercase();
        if name.is_empty() {
            return Err(GpuError::Invalid("a GPU request needs a type, e.g. gpu=\"H100\" or gpu=\"any\"".into()));
        }
        if count == 0 {
            return Err(GpuError::Invalid(format!("gpu=\"{name}:0\" asks for no GPU; drop gpu= instead")));
        }
        Ok(GpuRequest { name, count })
    }

    /// `"H100"`, `"a10g:2"`, `"any"`: the forms `gpu=` takes.
    pub fn parse(text: &str) -> Result<Self, GpuError> {
        match text.split_once(':') {
            Some((name, count)) => {
                let n = count.trim().parse().map_err(|_| GpuError::Invalid(format!("invalid GPU count in gpu=\"{text}\"")))?;
                GpuRequest::new(name, n)
            }
            None => GpuRequest::new(text, 1),
        }
    }

    /// Whether a card answering to `label` (None: model unknown) serves this request, and how
    /// well: 0 is an exact match, higher ranks are upgrades taken only after exact matches.
    pub fn accepts(&self, label: Option<&str>) -> Option<u8> {
        let name = self.name.as_str();
        if name == "ANY" {
            return Some(0);
        }
        let label = label?;
        match (name, label) {
            (n, l) if n == l => Some(0),
            // Modal's "A100" is either size; the 40 GB one first.
            ("A100", "A100-40GB") => Some(0),
            ("A100", "A100-80GB") => Some(1),
            // Modal may run an H100 request on an H200; "H100!" forbids that.
            ("H100", "H200") => Some(1),
            ("H100!", "H100") => Some(0),
            ("A10", "A10G") => Some(0),
            _ => None,
        }
    }
}

impl fmt::Display for GpuRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "\"{}\"", self.name)
        } else {
            write!(f, "\"{}:{}\"", self.name, self.count)
        }
    }
}

/// A function's GPU requests, most preferred first (`gpu=["H100", "A100"]`); one entry for a
/// plain `gpu="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuChoices(Vec<GpuRequest>);

impl GpuChoices {
    pub fn new(requests: Vec<GpuRequest>) -> Result<Self, GpuError> {
        if requests.is_empty() {
            return Err(GpuError::Invalid("an empty GPU list asks for nothing; drop gpu= instead".into()));
        }
        Ok(GpuChoices(requests))
    }

    pub fn one(request: GpuRequest) -> Self {
        GpuChoices(vec![request])
    }

    /// Parses each entry as [`GpuRequest::parse`] does.
    pub fn parse_list(items: &[&str]) -> Result<Self, GpuError> {
        GpuChoices::new(items.iter().map(|i| GpuRequest::parse(i)).collect::<Result<_, _>>()?)
    }

    pub fn requests(&self) -> &[GpuRequest] {
        &self.0
    }

    /// The most preferred request.
    pub fn first(&self) -> &GpuRequest {
        &self.0[0]
    }
}

impl fmt::Display for GpuChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => one.fmt(f),
            many => {
                let items: Vec<String> = many.iter().map(|r| r.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_names_map_to_modal_types() {
        let cases: &[(&str, Option<u64>, Option<&str>)] = &[
            ("Tesla T4", None, Some("T4")),
            ("NVIDIA L4", None, Some("L4")),
            ("NVIDIA A10G", None, Some("A10G")),
            ("NVIDIA A10", None, Some("A10G")),
            ("NVIDIA A100-SXM4-40GB", None, Some("A100-40GB")),
            ("NVIDIA A100-SXM4-80GB", None, Some("A100-80GB")),
            ("NVIDIA A100 80GB PCIe", None, Some("A100-80GB")),
            ("NVIDIA A100-PCIE-40GB", None, Some("A100-40GB")),
            ("NVIDIA A100", Some(81_920 << 20), Some("A100-80GB")),
            ("NVIDIA L40S", None, Some("L40S")),
            ("NVIDIA L40", None, None),
            ("NVIDIA H100 80GB HBM3", None, Some("H100")),
            ("NVIDIA H100 PCIe", None, Some("H100")),
            ("NVIDIA H100 NVL", None, Some("H100")),
            ("NVIDIA H200", None, Some("H200")),
            ("NVIDIA H200 NVL", None, Some("H200")),
            ("NVIDIA B200", None, Some("B200")),
            ("NVIDIA RTX 6000 Ada Generation", None, None),
            ("NVIDIA GeForce RTX 4090", None, None),
        ];
        for (name, mem, want) in cases {
            assert_eq!(modal_name(name, *mem), *want, "{name}");
        }
    }

    #[test]
    fn aliases_name_other_cards_and_win_over_modal_names() {
        let mut a = GpuAliases::default();
        a.add("NVIDIA RTX 6000 Ada Generation=L40S").unwrap();
        a.add_file("# lab cards\n\nNVIDIA GeForce RTX 4090 = rtx4090\n").unwrap();
        assert_eq!(a.label("NVIDIA RTX 6000 Ada Generation", None).as_deref(), Some("L40S"));
        assert_eq!(a.label("nvidia geforce rtx 4090", None).as_deref(), Some("RTX4090"));
        assert_eq!(a.label("NVIDIA H200", None).as_deref(), Some("H200"));
        assert!(a.add("no equals sign").is_err());
        assert!(a.add("=H100").is_err());
    }

    #[test]
    fn requests_parse_like_the_client_sends_them() {
        assert_eq!(GpuRequest::parse("a10g:2").unwrap(), GpuRequest { name: "A10G".into(), count: 2 });
        assert_eq!(GpuRequest::parse("any").unwrap(), GpuRequest { name: "ANY".into(), count: 1 });
        assert!(GpuRequest::parse("H100:x").is_err());
        assert!(GpuRequest::parse("H100:0").is_err());
        assert!(GpuChoices::new(vec![]).is_err());
        let list = GpuChoices::parse_list(&["H100", "A100:2"]).unwrap();
        assert_eq!(list.to_string(), "[\"H100\", \"A100:2\"]");
        assert_eq!(GpuChoices::one(GpuRequest::parse("T4").unwrap()).to_string(), "\"T4\"");
    }

    #[test]
    fn which_cards_a_request_accepts() {
        let r = |s: &str| GpuRequest::parse(s).unwrap();
        assert_eq!(r("A100").accepts(Some("A100-40GB")), Some(0));
        assert_eq!(r("A100").accepts(Some("A100-80GB")), Some(1));
        assert_eq!(r("A100-80GB").accepts(Some("A100-40GB")), None);
        assert_eq!(r("H100").accepts(Some("H200")), Some(1));
        assert_eq!(r("H100!").accepts(Some("H200")), None);
        assert_eq!(r("H100!").accepts(Some("H100")), Some(0));
        assert_eq!(r("ANY").accepts(None), Some(0));
        assert_eq!(r("T4").accepts(None), None);
        assert_eq!(r("RTX4090").accepts(Some("RTX4090")), Some(0));
    }
}
