"""CLIP's byte-level BPE tokenizer without torch: the same token ids as open_clip's SimpleTokenizer.

open_clip's tokenizer module imports torch (seconds); this port needs only ftfy and regex, so a
text query through an ONNX export starts fast. The merges come from the export (written from
the model's own tokenizer), and the export checks ids against open_clip's before it is used.
"""

from __future__ import annotations

import functools
import gzip
import html
import string
from pathlib import Path

import numpy as np

CLEANERS = ("lower", "whitespace", "canonicalize")  # open_clip's clean= options
SPECIAL_TOKENS = ["<start_of_text>", "<end_of_text>"]
VOCAB_HEADER = "#version: stylesearch clip-bpe merges"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2/CLIP BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_PLAIN = frozenset(string.printable) - set("&\x0b\x0c")  # text ftfy returns unchanged (tested)


def _basic_clean(text: str) -> str:
    if not set(text) <= _PLAIN:  # importing ftfy costs more than the rest of a query's tokenising
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _canonicalize(text: str) -> str:
    text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split()).strip()


def clean(text: str, how: str) -> str:
    """open_clip's text cleaning: 'lower' (its default), 'whitespace' or 'canonicalize'."""
    text = _basic_clean(text)
    if how == "canonicalize":
        return _canonicalize(text)
    text = " ".join(text.split()).strip()
    return text.lower() if how == "lower" else text


def write_merges(path: Path, merges: list[tuple[str, str]]) -> None:
    """Save BPE merges (pairs in rank order) as gzipped text, one 'a b' pair a line."""
    body = "\n".join([VOCAB_HEADER] + [f"{a} {b}" for a, b in merges]) + "\n"
    path.write_bytes(gzip.compress(body.encode("utf-8"), mtime=0))


def read_merges(path: Path) -> list[str]:
    """The merges of a file written by write_merges, as 'a b' strings in rank order."""
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")[1:]
    return [line for line in lines if line]


class ClipTokenizer:
    """Token ids of prompts, padded/truncated to the context length as open_clip does."""

    def __init__(self, merges: list[str], context_length: int = 77, cleaning: str = "lower",
                 special_tokens: list[str] = SPECIAL_TOKENS):
        """`merges`: 'a b' strings in rank order (string keys load several times faster than tuples)."""
        import regex

        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + [m.replace(" ", "") for m in merges]
        self.encoder = {tok: i for i, tok in enumerate(vocab + list(special_tokens))}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in special_tokens}
        self.sot, self.eot = self.encoder[special_tokens[0]], self.encoder[special_tokens[1]]
        self.context_length = context_length
        self.cleaning = cleaning
        self.pattern = regex.compile("|".join(special_tokens)  # unescaped, as open_clip does
                                     + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)

    @classmethod
    def from_file(cls, path: Path, **kw) -> "ClipTokenizer":
        return cls(read_merges(path), **kw)

    def bpe(self, token: str) -> list[str]:
        """The BPE pieces of one pre-token (its last piece ends in </w>)."""
        if token in self.cache:
            return self.cache[token].split(" ")
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {f"{a} {b}" for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            word = _merge(word, tuple(best.split(" ")))
        self.cache[token] = " ".join(word)
        return word

    def encode(self, text: str) -> list[int]:
        table = bytes_to_unicode()
        ids = []
        for token in self.pattern.findall(clean(text, self.cleaning)):
            ids += [self.encoder[piece] for piece in self.bpe("".join(table[b] for b in token.encode("utf-8")))]
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        """int64 ids (len(texts), context_length): start, tokens, end, zeros; long text ends in end-of-text."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    first, second = pair
    out, i = [], 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
