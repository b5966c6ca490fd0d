//! The language model's tokenizer: byte-level BPE (GPT-2's scheme) trained with the
//! `tokenizers` crate on the env's own text, so any string round-trips exactly.

use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder,
};

use crate::PolicyError;

/// Marks the start of a sequence.
pub const BOS: &str = "<|bos|>";
/// Marks the end of a completion: generation stops on it.
pub const EOS: &str = "<|eos|>";

/// A trained tokenizer with the ids of its special tokens and each token's text.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    add_bos: bool,
    pieces: Vec<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer({} tokens)", self.pieces.len())
    }
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> PolicyError + '_ {
    move |e| PolicyError::Config(format!("tokenizer: {what}: {e}"))
}

impl TextTokenizer {
    /// Trains byte-level BPE with at most `vocab_size` tokens (the 256 bytes, the special
    /// tokens and merges) on `texts`. The same texts give the same tokenizer.
    pub fn train<S: AsRef<str> + Send + Sync>(
        texts: &[S],
        vocab_size: usize,
    ) -> Result<Self, PolicyError> {
        if !(260..=1 << 20).contains(&vocab_size) {
            return Err(PolicyError::Config(format!(
                "vocab_size must be in 260..=1048576 (256 bytes and the special tokens), got \
                 {vocab_size}"
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(vec![
                AddedToken::from(BOS, true),
                AddedToken::from(EOS, true),
            ])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let builder: TokenizerBuilder<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        > = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
        let mut built = builder.build().map_err(tok_err("cannot build"))?;
        built
            .train(&mut trainer, texts.iter().map(|t| t.as_ref()))
            .map_err(tok_err("training failed"))?;
        Self::from_tokenizer(built.into())
    }

    /// Reads a tokenizer saved by [`save`](Self::save) (Hugging Face's `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            PolicyError::Load(format!("{}: not a tokenizer.json: {e}", path.display()))
        })?;
        Self::from_tokenizer(inner)
    }

    /// Parses a tokenizer from its JSON.
    pub fn from_json(json: &str) -> Result<Self, PolicyError> {
        let inner: Tokenizer = json
            .parse()
            .map_err(|e| PolicyError::Load(format!("not a tokenizer.json: {e}")))?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, PolicyError> {
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| PolicyError::Load(format!("the tokenizer has no `{t}` token")))
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        Self::from_parts(inner, bos, eos, true)
    }

    /// A tokenizer with its own start and end tokens (a pretrained model's); `add_bos` says
    /// whether prompts start with the start token (else the prompt's template writes it).
    pub fn from_parts(
        inner: Tokenizer,
        bos: u32,
        eos: u32,
        add_bos: bool,
    ) -> Result<Self, PolicyError> {
        let n = inner.get_vocab_size(true);
        if bos as usize >= n || eos as usize >= n {
            return Err(PolicyError::Load(format!(
                "start and end tokens {bos} and {eos} are outside a vocabulary of {n}"
            )));
        }
        let added = inner.get_added_vocabulary();
        let pieces = (0..n as u32)
            .map(|i| {
                let special = inner
                    .id_to_token(i)
                    .is_some_and(|t| added.is_special_token(&t));
                if i == bos || i == eos || special {
                    Ok(String::new())
                } else {
                    inner.decode(&[i], false).map_err(tok_err("cannot decode"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos,
            pieces,
        })
    }

    /// Widens the vocabulary to `n` ids (a pretrained model's embedding table is often
    /// padded past its tokenizer's last token); the extra ids decode to nothing.
    pub fn pad_vocab(&mut self, n: usize) {
        if n > self.pieces.len() {
            self.pieces.resize(n, String::new());
        }
    }

    /// The tokenizer as JSON (Hugging Face's `tokenizer.json` format).
    pub fn to_json(&self) -> Result<String, PolicyError> {
        self.inner
            .to_string(false)
            .map_err(tok_err("cannot encode as JSON"))
    }

    /// Tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The start-of-sequence id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// Whether prompts start with the start token.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The end-of-completion id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The text of one token (empty for special tokens; U+FFFD for part of a multi-byte
    /// character).
    pub fn piece(&self, id: u32) -> &str {
        self.pieces.get(id as usize).map_or("", String::as_str)
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PolicyError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err("cannot encode"))?
            .get_ids()
            .to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PolicyError> {
        self.inner
            .decode(ids, true)
            .map_err(tok_err("cannot decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_deterministically_and_round_trips_any_text() {
        let texts: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "instruction: push the red cube into the blue zone\nobjects: red cube ({i}, \
                     -{i})\naction: push red cube to blue zone"
                )
            })
            .collect();
        let a = TextTokenizer::train(&texts, 300).unwrap();
        let b = TextTokenizer::train(&texts, 300).unwrap();
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        assert!(a.vocab_size() <= 300 && a.vocab_size() > 258);
        let c = TextTokenizer::from_json(&a.to_json().unwrap()).unwrap();
        for text in [
            "push red cube to blue zone",
            "",
            "  spaces\n\nand ünïcödé ⇒ 🙂",
        ] {
            let ids = a.encode(text).unwrap();
            assert_eq!(a.decode(&ids).unwrap(), text);
            assert_eq!(c.encode(text).unwrap(), ids);
        }
        // Merges learned from the text: a frequent phrase takes few tokens.
        assert!(a.encode(" the blue zone").unwrap().len() <= 6);
        let concat: String = a
            .encode("push red cube")
            .unwrap()
            .iter()
            .map(|&i| a.piece(i))
            .collect();
        assert_eq!(concat, "push red cube");
        assert!(TextTokenizer::train(&texts, 10).is_err());
        assert!(TextTokenizer::from_json("{}").is_err());
    }
}
