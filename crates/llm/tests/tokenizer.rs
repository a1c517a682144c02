//! The tokenizer comes from the GGUF metadata through llama.cpp; these ids are llama.cpp's own
//! (`llama-tokenize` on the same file), so Ferry's prompts are exactly what llama.cpp would feed.

use std::path::PathBuf;

use ferry_llm::engine::{Engine, EngineConfig};
use ferry_llm::template::{ChatTemplate, TemplateMessage};

fn engine() -> std::sync::Arc<Engine> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run tools/setup.d/llm.sh", path.display());
    Engine::load(&path, "gemma".into(), EngineConfig { parallel: 1, ctx_per_seq: 512, threads: 1, gpu_layers: 0, prompt_cache: true, kv_unified: false, mmproj: None }).unwrap()
}

#[test]
fn tokenizer_matches_llama_cpp_and_template_tokens_are_special() {
    let e = engine();
    assert_eq!(e.tokenize_raw("The capital of France is"), vec![2, 818, 5279, 529, 7001, 563]);
    assert_eq!(e.info.bos_text, "<bos>");
    assert!(e.info.chat_template.is_none(), "this GGUF ships no chat template");

    let t = ChatTemplate::new(None).unwrap();
    let prompt = t.render(&[TemplateMessage { role: "user".into(), content: "Hi".into() }], &e.info.bos_text, &e.info.eos_text).unwrap();
    let ids = e.tokenize(&prompt);
    // <bos> <start_of_turn> ... <end_of_turn> ... <start_of_turn> model \n
    assert_eq!(ids[0], 2);
    assert_eq!(ids[1], 105);
    assert!(ids.contains(&106));
    assert!(e.is_eog(106) && e.is_eog(1));
    // Decoding the pieces gives the text back (special tokens have no text).
    let text: Vec<u8> = e.tokenize_raw("Hello, world! Ünïcødé 🙂").iter().flat_map(|&t| e.token_bytes[t as usize].clone()).collect();
    assert_eq!(String::from_utf8(text).unwrap(), "Hello, world! Ünïcødé 🙂");
}
