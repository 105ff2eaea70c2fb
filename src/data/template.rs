//! The Qwen2.5-VL chat template as ms-swift's `qwen2_5_vl` template renders a seq_cls
//! prompt, with image pads already expanded:
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! - each `<image>` becomes `<|vision_start|>` + `<|image_pad|>` × (t·h·w / merge²) +
//!   `<|vision_end|>` (Qwen2_5_VLProcessor's expansion of the chat template's single pad);
//! - messages render in order, each `<|im_start|>{role}\n{content}<|im_end|>\n`;
//! - a system message in the row replaces the default system prompt (HF template: the
//!   default is used only when the first message is not a system message);
//! - the prompt ends with the generation prompt `<|im_start|>assistant\n`, whose final
//!   `\n` is the token the classifier pools; a row that ends with an assistant turn has no
//!   generation prompt (ms-swift encodes such a row as is, in training and in inference),
//!   so the pooled token is the `\n` after that turn's `<|im_end|>`.
//!
//! Tokenizing the whole string with special tokens recognised gives the same ids as
//! SWIFT's piecewise encoding, since added tokens split the text before pre-tokenization
//! (checked against transformers in `tests/it/data_reference.rs`).

use tokenizers::Tokenizer;

use super::rows::{IMAGE_TAG, Message, Role};

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Number of `<|image_pad|>` tokens for an image grid (t, h, w) in patches.
pub fn image_tokens(grid_thw: [usize; 3], merge_size: usize) -> usize {
    grid_thw.iter().product::<usize>() / (merge_size * merge_size)
}

/// Render the prompt. `grids[i]` belongs to the i-th `<image>` tag; the caller guarantees
/// as many tags as grids (rows are validated that way).
pub fn render_prompt(
    messages: &[Message],
    default_system: &str,
    grids: &[[usize; 3]],
    merge_size: usize,
) -> String {
    let mut out = String::new();
    let mut grids = grids.iter();
    let mut turn = |out: &mut String, role: &str, content: &str| {
        out.push_str(IM_START);
        out.push_str(role);
        out.push('\n');
        let mut pieces = content.split(IMAGE_TAG);
        out.push_str(pieces.next().unwrap_or_default());
        for piece in pieces {
            let grid = grids.next().expect("as many <image> tags as images");
            out.push_str(VISION_START);
            out.push_str(&IMAGE_PAD.repeat(image_tokens(*grid, merge_size)));
            out.push_str(VISION_END);
            out.push_str(piece);
        }
        out.push_str(IM_END);
        out.push('\n');
    };
    if messages.first().is_none_or(|m| m.role != Role::System) {
        turn(&mut out, Role::System.as_str(), default_system);
    }
    for m in messages {
        turn(&mut out, m.role.as_str(), &m.content);
    }
    if messages.last().is_none_or(|m| m.role != Role::Assistant) {
        out.push_str(IM_START);
        out.push_str(Role::Assistant.as_str());
        out.push('\n');
    }
    out
}

/// Token ids of a rendered prompt (special tokens recognised, nothing added).
pub fn encode_prompt(tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode(prompt, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_swift_seq_cls_prompt() {
        let msgs = [Message {
            role: Role::User,
            content: "<image>What?".into(),
        }];
        let p = render_prompt(&msgs, "You are a helpful assistant.", &[[1, 4, 2]], 2);
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|image_pad|><|vision_end|>What?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let msgs = [
            Message {
                role: Role::System,
                content: "S".into(),
            },
            Message {
                role: Role::User,
                content: "a<image>b<image>".into(),
            },
            Message {
                role: Role::Assistant,
                content: "c".into(),
            },
        ];
        let p = render_prompt(&msgs, "unused", &[[1, 2, 2], [1, 2, 4]], 2);
        assert_eq!(
            p,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|vision_start|><|image_pad|>\
             <|vision_end|>b<|vision_start|><|image_pad|><|image_pad|><|vision_end|><|im_end|>\n\
             <|im_start|>assistant\nc<|im_end|>\n"
        );
    }
}
