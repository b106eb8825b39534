//! A bundle's `tokenizer.json` (HF `tokenizers`, BERT-style WordPiece) with BLIP's conventions:
//! filter texts are `[CLS] text [SEP]` truncated to the bundle's `max_length` with the final
//! `[SEP]` kept (the ITM graph swaps `[CLS]` for `[ENC]` itself); captions start from `[DEC]`
//! plus the prompt; a generated caption is decoded without special tokens and with the prompt
//! stripped. The same rules as the trainer's `preprocess.py`.

use std::path::Path;

use tokenizers::Tokenizer;

/// Tokenizer errors.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("cannot load the tokenizer {path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Codec(String),
}

/// A loaded tokenizer with the ids BLIP needs.
#[derive(Debug, Clone)]
pub struct BlipTokenizer {
    inner: Tokenizer,
    /// `[PAD]`.
    pub pad: u32,
    /// `[SEP]`: ends a text, stops generation.
    pub sep: u32,
    /// `[CLS]`: first token of filter texts.
    pub cls: u32,
}

impl BlipTokenizer {
    /// Loads `path`; `pad`, `sep` and `cls` come from the bundle manifest.
    pub fn load(path: &Path, pad: u32, sep: u32, cls: u32) -> Result<Self, TextError> {
        let inner = Tokenizer::from_file(path).map_err(|e| TextError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner,
            pad,
            sep,
            cls,
        })
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `[first] text [SEP]`, truncated to `max_len` tokens keeping the final `[SEP]`.
    pub fn encode(&self, text: &str, first: u32, max_len: usize) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TextError::Codec(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > max_len && max_len >= 2 {
            ids.truncate(max_len - 1);
            ids.push(self.sep);
        }
        if let Some(f) = ids.first_mut() {
            *f = first;
        }
        Ok(ids)
    }

    /// Right-padded `[CLS] text [SEP]` ids and attention masks for the filter, `[n, width]`
    /// row-major, with `width` the longest row.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        max_len: usize,
    ) -> Result<(Vec<i64>, Vec<i64>, usize), TextError> {
        let rows = texts
            .iter()
            .map(|t| self.encode(t, self.cls, max_len))
            .collect::<Result<Vec<_>, _>>()?;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![i64::from(self.pad); rows.len() * width];
        let mut mask = vec![0i64; rows.len() * width];
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.iter().enumerate() {
                ids[i * width + j] = i64::from(t);
                mask[i * width + j] = 1;
            }
        }
        Ok((ids, mask, width))
    }

    /// `[DEC]` followed by the prompt's tokens (no `[SEP]`): where generation starts.
    pub fn prompt_ids(&self, prompt: &str, dec: u32) -> Result<Vec<u32>, TextError> {
        let mut ids = self.encode(prompt, dec, usize::MAX)?;
        ids.pop();
        Ok(ids)
    }

    /// Generated ids (prompt included) to caption text, special tokens and the prompt removed.
    pub fn decode_caption(&self, ids: &[u32], prompt: &str) -> Result<String, TextError> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| TextError::Codec(e.to_string()))?;
        let text = text.trim();
        let p = prompt.trim();
        Ok(match text.strip_prefix(p) {
            Some(rest) if !p.is_empty() => rest.trim().to_string(),
            _ => text.to_string(),
        })
    }
}
