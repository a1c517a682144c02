//! Text moderation for `/v1/moderations`.
//!
//! Two sources, both named in every response's docs (`docs/llm.md`):
//! - a trained offensive-language classifier: the TF-IDF + calibrated linear SVM shipped in the
//!   PyPI package `alt-profanity-check`, exported to JSON by `tools/llm/export_moderation.py`
//!   and evaluated here exactly (same tokenisation, idf, L2 norm, sigmoid calibration per fold);
//! - Ferry's own keyword lexicon for the categories that classifier cannot see (self-harm,
//!   sexual, violence, illicit, threats, protected groups). Lexicon scores are coarse: a hit
//!   gives a fixed score, not a probability.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

pub const FLAG_THRESHOLD: f32 = 0.5;

#[derive(Deserialize)]
struct Fold {
    coef: Vec<f32>,
    intercept: f32,
    a: f32,
    b: f32,
}

#[derive(Deserialize)]
struct OffensiveModel {
    source: String,
    vocabulary: HashMap<String, usize>,
    idf: Vec<f32>,
    folds: Vec<Fold>,
    /// Reference probabilities from scikit-learn, for the parity test.
    #[serde(default)]
    #[cfg_attr(not(test), allow(dead_code))]
    checks: HashMap<String, f64>,
}

/// Splits like scikit-learn's `(?u)\b\w\w+\b` on lowercased text.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().count() >= 2)
        .map(String::from)
        .collect()
}

impl OffensiveModel {
    fn probability(&self, text: &str) -> f32 {
        let mut counts: HashMap<usize, f32> = HashMap::new();
        for w in words(text) {
            if let Some(&i) = self.vocabulary.get(&w) {
                *counts.entry(i).or_default() += 1.0;
            }
        }
        let mut x: Vec<(usize, f32)> = counts.into_iter().map(|(i, c)| (i, c * self.idf[i])).collect();
        let norm = x.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            x.iter_mut().for_each(|(_, v)| *v /= norm);
        }
        let p: f32 = self
            .folds
            .iter()
            .map(|f| {
                let d = f.intercept + x.iter().map(|&(i, v)| f.coef[i] * v).sum::<f32>();
                1.0 / (1.0 + (f.a * d + f.b).exp())
            })
            .sum();
        p / self.folds.len().max(1) as f32
    }
}

/// Ferry's keyword lexicon: (category, words). Matching is on whole lowercase words or phrases.
const LEXICON: &[(&str, &[&str])] = &[
    ("threat", &["kill you", "i will kill", "hurt you", "find you and", "you will die", "shoot you", "stab you", "beat you up"]),
    ("group", &["immigrants", "muslims", "jews", "christians", "black people", "white people", "gays", "women are", "men are", "refugees"]),
    ("violence", &["kill", "murder", "shoot", "stab", "attack", "bomb", "assault", "beat up", "strangle", "massacre"]),
    ("graphic", &["gore", "dismember", "disembowel", "blood everywhere", "mutilate", "decapitate", "entrails"]),
    ("self_harm", &["kill myself", "suicide", "self harm", "self-harm", "cut myself", "end my life", "hurt myself", "overdose"]),
    ("self_harm_intent", &["i want to die", "i want to kill myself", "going to kill myself", "i will end my life", "i am going to end it"]),
    ("self_harm_instructions", &["how to kill myself", "best way to die", "how many pills", "how to cut myself", "painless way to die"]),
    ("sexual", &["sex", "porn", "nude", "naked", "erotic", "orgasm", "explicit sexual"]),
    ("minors", &["child", "children", "kid", "kids", "minor", "minors", "underage", "teen", "schoolgirl", "schoolboy"]),
    ("illicit", &["buy drugs", "make meth", "cook meth", "steal", "shoplift", "launder money", "counterfeit", "hack into", "pick a lock", "fake id"]),
    ("weapon", &["bomb", "explosive", "gun", "firearm", "weapon", "pipe bomb", "grenade"]),
];

fn hits(text: &str, group: &str) -> bool {
    let all: Vec<String> = text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(String::from).collect();
    let padded = format!(" {} ", all.join(" "));
    let lower = text.to_lowercase();
    LEXICON
        .iter()
        .filter(|(g, _)| *g == group)
        .flat_map(|(_, ws)| ws.iter())
        .any(|w| if w.contains(['-', '\'']) { lower.contains(w) } else { padded.contains(&format!(" {w} ")) })
}

/// Scores of one input for the 13 OpenAI categories.
#[derive(Debug, Clone)]
pub struct Scores(pub Vec<(&'static str, f32)>);

impl Scores {
    pub fn flagged(&self) -> bool {
        self.0.iter().any(|(_, s)| *s >= FLAG_THRESHOLD)
    }
}

pub struct Moderator {
    offensive: Option<OffensiveModel>,
    pub problem: Option<String>,
}

/// Where `tools/setup.d/llm.sh` puts the exported classifier: next to the model file.
pub fn default_dir(model: &Path) -> PathBuf {
    std::env::var_os("FERRY_LLM_MODERATION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| model.parent().unwrap_or(Path::new(".")).join("moderation"))
}

impl Moderator {
    pub fn load(dir: &Path) -> Moderator {
        let path = dir.join("offensive.json");
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<OffensiveModel>(&b).map_err(|e| e.to_string())) {
            Ok(m) => Moderator { offensive: Some(m), problem: None },
            Err(e) => Moderator {
                offensive: None,
                problem: Some(format!("the moderation classifier {} could not be loaded ({e}); run tools/setup.d/llm.sh", path.display())),
            },
        }
    }

    pub fn source(&self) -> Option<&str> {
        self.offensive.as_ref().map(|m| m.source.as_str())
    }

    pub fn score(&self, text: &str) -> Option<Scores> {
        let off = self.offensive.as_ref()?.probability(text);
        let lex = |g: &str| if hits(text, g) { 1.0f32 } else { 0.0 };
        let threat = lex("threat");
        let group = lex("group");
        let violence = lex("violence").max(threat);
        let self_harm = lex("self_harm").max(lex("self_harm_intent")).max(lex("self_harm_instructions"));
        let sexual = lex("sexual");
        let illicit = lex("illicit");
        let s = |x: f32| (x * 1000.0).round() / 1000.0;
        Some(Scores(vec![
            ("harassment", s(off)),
            ("harassment/threatening", s(off.max(0.5) * threat)),
            ("hate", s(off * group)),
            ("hate/threatening", s(off * group * threat)),
            ("illicit", s(0.8 * illicit)),
            ("illicit/violent", s(0.8 * illicit * lex("weapon"))),
            ("self-harm", s(0.8 * self_harm)),
            ("self-harm/instructions", s(0.8 * lex("self_harm_instructions"))),
            ("self-harm/intent", s(0.8 * lex("self_harm_intent"))),
            ("sexual", s(0.8 * sexual)),
            ("sexual/minors", s(0.8 * sexual * lex("minors"))),
            ("violence", s(0.7 * violence)),
            ("violence/graphic", s(0.8 * lex("graphic"))),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Moderator {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/moderation");
        let m = Moderator::load(&dir);
        assert!(m.problem.is_none(), "{:?} (run tools/setup.d/llm.sh first)", m.problem);
        m
    }

    #[test]
    fn rust_port_matches_scikit_learn_probabilities() {
        let m = model();
        let om = m.offensive.as_ref().unwrap();
        assert!(!om.checks.is_empty());
        for (text, want) in &om.checks {
            let got = om.probability(text) as f64;
            assert!((got - want).abs() < 1e-3, "{text}: rust {got} vs sklearn {want}");
        }
    }

    #[test]
    fn categories_follow_the_text() {
        let m = model();
        let benign = m.score("What a lovely afternoon for a walk in the park.").unwrap();
        assert!(!benign.flagged(), "{benign:?}");
        let rude = m.score("you are a stupid idiot").unwrap();
        assert!(rude.0[0].1 > 0.9);
        let sh = m.score("I want to kill myself tonight").unwrap();
        let get = |s: &Scores, k: &str| s.0.iter().find(|(c, _)| *c == k).unwrap().1;
        assert!(get(&sh, "self-harm/intent") >= FLAG_THRESHOLD && get(&sh, "self-harm") >= FLAG_THRESHOLD);
        assert_eq!(get(&rude, "sexual"), 0.0);
        assert_eq!(words("Hello, WORLD a_b x"), vec!["hello", "world", "a_b"]);
    }
}
