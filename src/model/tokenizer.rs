//! Tokenizers for the model sources: a Hugging Face `tokenizer.json`, or one built in code
//! for the presets (which ship no files).
//!
//! - `ModelSource::Path(dir)`: `<dir>/tokenizer.json` through the `tokenizers` crate
//!   (Qwen's pre-tokenizer regex uses a lookahead, `\s+(?!\S)`, hence `fancy-regex`).
//! - preset `tiny`: byte-level BPE with no merges: byte `b` is token `b` (ids 0..=255),
//!   then the seven Qwen special tokens the template and the model need, ids 256..=262
//!   (`TINY_*` consts). The tiny model's text vocab (`TINY_VOCAB_SIZE` = 320) covers them.
//! - presets `qwen2.5-vl-3b` / `qwen2.5-vl-7b` (random weights): the real Qwen tokenizer
//!   when env `PIPELINE_QWEN_TOKENIZER` names a `tokenizer.json` (or a folder holding one);
//!   otherwise the same byte-level tokenizer but with the special tokens at Qwen's real ids
//!   (`<|endoftext|>` 151643 … `<|video_pad|>` 151656), so ids stay inside the real vocab.
//!
//! All built-in tokenizers use Qwen's NFC normalizer and split regex, so pre-tokenization
//! behaves as with the real file; only the merges (none) differ.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::Tokenizer;

/// Where the model (and so its tokenizer) comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A built-in preset name: `tiny`, `qwen2.5-vl-3b`, `qwen2.5-vl-7b`.
    Preset(String),
    /// A Hugging Face layout directory (config.json, *.safetensors, tokenizer.json, ...).
    Path(PathBuf),
}

/// Environment variable naming the real Qwen `tokenizer.json` for the Qwen presets.
pub const QWEN_TOKENIZER_ENV: &str = "PIPELINE_QWEN_TOKENIZER";

/// Text vocabulary size of the `tiny` preset (byte tokens + specials, rounded up).
pub const TINY_VOCAB_SIZE: usize = 320;
/// `<|endoftext|>` in the tiny tokenizer; also the pad token.
pub const TINY_ENDOFTEXT: u32 = 256;
pub const TINY_IM_START: u32 = 257;
pub const TINY_IM_END: u32 = 258;
pub const TINY_VISION_START: u32 = 259;
pub const TINY_VISION_END: u32 = 260;
pub const TINY_IMAGE_PAD: u32 = 261;
pub const TINY_VIDEO_PAD: u32 = 262;
/// The pad id of the tiny preset (`<|endoftext|>`, as Qwen's pad).
pub const TINY_PAD: u32 = TINY_ENDOFTEXT;

/// `<|endoftext|>` (pad) in the real Qwen vocabulary; the other specials follow in order.
pub const QWEN_ENDOFTEXT: u32 = 151_643;

/// The Qwen special tokens in id order from `<|endoftext|>` (Qwen2.5 tokenizer.json).
const QWEN_SPECIALS: [&str; 14] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
];

/// The specials of the tiny tokenizer, at ids 256.. in this order.
const TINY_SPECIALS: [&str; 7] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
];

/// Qwen2's pre-tokenizer split pattern (tokenizer.json `pre_tokenizer.pretokenizers[0]`).
const QWEN_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Names of the presets this module knows.
pub const TOKENIZER_PRESETS: [&str; 3] = ["tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer file {path} not found (a model directory needs tokenizer.json)")]
    Missing { path: PathBuf },
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("unknown model preset {name:?}; valid presets: {}", TOKENIZER_PRESETS.join(", "))]
    UnknownPreset { name: String },
    #[error("tokenizer has no special token {token:?} (needed by the Qwen2.5-VL template)")]
    MissingSpecial { token: &'static str },
    #[error("cannot build the built-in tokenizer: {0}")]
    Build(String),
}

/// The file a source's tokenizer is read from, if any (for cache keys: its bytes matter).
/// For the Qwen presets this is the file named by `PIPELINE_QWEN_TOKENIZER`, when set.
pub fn tokenizer_file(source: &ModelSource) -> Option<PathBuf> {
    match source {
        ModelSource::Path(dir) => Some(dir.join("tokenizer.json")),
        ModelSource::Preset(name) if name != "tiny" => {
            std::env::var_os(QWEN_TOKENIZER_ENV).map(|p| resolve_tokenizer_path(Path::new(&p)))
        }
        ModelSource::Preset(_) => None,
    }
}

/// A path that may be a `tokenizer.json` or a folder holding one.
fn resolve_tokenizer_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("tokenizer.json")
    } else {
        p.to_path_buf()
    }
}

/// Load the tokenizer of a model source (see the module docs for the rules).
pub fn load_tokenizer(source: &ModelSource) -> Result<Tokenizer, TokenizerError> {
    match source {
        ModelSource::Path(_) => {
            let path = tokenizer_file(source).expect("a path source has a tokenizer file");
            load_tokenizer_file(&path)
        }
        ModelSource::Preset(name) => match name.as_str() {
            "tiny" => byte_level_tokenizer(&TINY_SPECIALS, TINY_ENDOFTEXT),
            "qwen2.5-vl-3b" | "qwen2.5-vl-7b" => match tokenizer_file(source) {
                Some(path) => load_tokenizer_file(&path),
                None => byte_level_tokenizer(&QWEN_SPECIALS, QWEN_ENDOFTEXT),
            },
            _ => Err(TokenizerError::UnknownPreset { name: name.clone() }),
        },
    }
}

/// Load a `tokenizer.json` file.
pub fn load_tokenizer_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    if !path.is_file() {
        return Err(TokenizerError::Missing {
            path: path.to_path_buf(),
        });
    }
    Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// GPT-2's reversible byte → printable-char map used by ByteLevel pre-tokenizers:
/// printable Latin-1 bytes map to themselves, the rest to U+0100 upwards in byte order.
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("U+0100.. are valid chars")
}

/// Byte-level BPE without merges: byte `b` → id `b`; `specials` at ids `first_special..`.
fn byte_level_tokenizer(
    specials: &[&str],
    first_special: u32,
) -> Result<Tokenizer, TokenizerError> {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_to_char(b).to_string(), json!(b));
    }
    // Specials live in the model vocab too, so the added vocabulary keeps their (possibly
    // sparse) ids instead of numbering them after the vocab.
    let mut added = Vec::new();
    for (i, tok) in specials.iter().enumerate() {
        let id = first_special + i as u32;
        vocab.insert(tok.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": false, "use_regex": false});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_REGEX},
             "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    let bytes = serde_json::to_vec(&spec).map_err(|e| TokenizerError::Build(e.to_string()))?;
    Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Build(e.to_string()))
}

/// Ids of the special tokens the Qwen2.5-VL template and the classifier use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// `<|endoftext|>`: Qwen's pad token.
    pub pad: u32,
    pub image_pad: u32,
    pub video_pad: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub im_start: u32,
    pub im_end: u32,
}

impl SpecialTokens {
    /// Look the special tokens up by their strings.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self, TokenizerError> {
        let id = |token: &'static str| {
            tok.token_to_id(token)
                .ok_or(TokenizerError::MissingSpecial { token })
        };
        Ok(Self {
            pad: id("<|endoftext|>")?,
            image_pad: id("<|image_pad|>")?,
            video_pad: id("<|video_pad|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn byte_map_is_a_bijection_onto_gpt2_chars() {
        let chars: std::collections::HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ'); // U+0120, the familiar GPT-2 space
        assert_eq!(byte_to_char(b'\n'), 'Ċ'); // U+010A
        assert_eq!(byte_to_char(0), 'Ā'); // U+0100
    }

    #[test]
    fn tiny_tokenizer_is_bytes_plus_specials() {
        let tok = load_tokenizer(&ModelSource::Preset("tiny".into())).unwrap();
        let text = "héllo wörld 12\n";
        let expected: Vec<u32> = text.bytes().map(u32::from).collect();
        assert_eq!(ids(&tok, text), expected);
        assert_eq!(
            ids(
                &tok,
                "<|im_start|>user\nx<|image_pad|><|image_pad|><|im_end|>"
            ),
            [
                TINY_IM_START,
                117,
                115,
                101,
                114,
                10,
                120,
                TINY_IMAGE_PAD,
                TINY_IMAGE_PAD,
                TINY_IM_END
            ]
        );
        let sp = SpecialTokens::from_tokenizer(&tok).unwrap();
        assert_eq!(
            [
                sp.pad,
                sp.im_start,
                sp.im_end,
                sp.vision_start,
                sp.vision_end,
                sp.image_pad,
                sp.video_pad
            ],
            [
                TINY_PAD,
                TINY_IM_START,
                TINY_IM_END,
                TINY_VISION_START,
                TINY_VISION_END,
                TINY_IMAGE_PAD,
                TINY_VIDEO_PAD
            ]
        );
        assert!(tok.get_vocab_size(true) <= TINY_VOCAB_SIZE);
        let decoded = tok.decode(&ids(&tok, "round trip ✓"), true).unwrap();
        assert_eq!(decoded, "round trip ✓");
    }

    #[test]
    fn qwen_preset_without_file_uses_real_special_ids() {
        // SAFETY of the test: nothing else in this test binary sets this variable.
        if std::env::var_os(QWEN_TOKENIZER_ENV).is_some() {
            return;
        }
        let tok = load_tokenizer(&ModelSource::Preset("qwen2.5-vl-7b".into())).unwrap();
        let sp = SpecialTokens::from_tokenizer(&tok).unwrap();
        assert_eq!(sp.pad, 151_643);
        assert_eq!((sp.im_start, sp.im_end), (151_644, 151_645));
        assert_eq!((sp.vision_start, sp.vision_end), (151_652, 151_653));
        assert_eq!((sp.image_pad, sp.video_pad), (151_655, 151_656));
        assert_eq!(ids(&tok, "a<|vision_start|>b"), [97, 151_652, 98]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = load_tokenizer(&ModelSource::Preset("qwen9".into())).unwrap_err();
        assert!(
            e.to_string().contains("tiny, qwen2.5-vl-3b, qwen2.5-vl-7b"),
            "{e}"
        );
        let e = load_tokenizer(&ModelSource::Path("/nonexistent/model".into())).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/model/tokenizer.json"),
            "{e}"
        );
        let bare = Tokenizer::from_bytes(
            r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
            "post_processor":null,"decoder":null,"truncation":null,"padding":null,
            "model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#,
        )
        .unwrap();
        let e = SpecialTokens::from_tokenizer(&bare).unwrap_err();
        assert!(e.to_string().contains("<|endoftext|>"), "{e}");
    }
}
