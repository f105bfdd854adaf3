"""The seeded ±1 random projection of gradient features, the same on every device."""

from __future__ import annotations

import math
import warnings

import torch

# ----------------------------------------------------------------------------------------------
# projection

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x · c) mod 2³² for 0 ≤ x < 2³² without overflowing int64 (c split into 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche); ints or int64 tensors."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_bytes(key: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Word indices ``(rows, W)`` int64 → their hashes as bytes ``(rows, 4W)`` uint8 (little end first)."""
    h = _fmix32((key & _M32) ^ k1)
    h = _fmix32(h ^ (key >> 32) ^ k2)
    shifts = torch.arange(0, 32, 8, dtype=torch.int64, device=key.device)
    return ((h[..., None] >> shifts) & 0xFF).to(torch.uint8).reshape(key.shape[0], -1)


def _unpack_signs(packed: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Bytes ``(rows, 4W)`` uint8 → signs ``(rows, d)``: column 8q + t is −1 where bit t of byte q is set."""
    if packed.device.type == "cpu":
        signs = _unpack_gather(packed, dtype)  # the faster of the two on a CPU
    else:
        signs = _unpack_where(packed, dtype)  # the faster on a GPU, and it compiles
    return signs.reshape(packed.shape[0], -1)[:, :d]


def _unpack_where(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    masks = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    one = torch.ones((), dtype=dtype, device=packed.device)
    return torch.where((packed[..., None] & masks) != 0, -one, one)


def _unpack_gather(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b = torch.arange(256, dtype=torch.int64, device=packed.device)
    table = (1 - 2 * ((b[:, None] >> torch.arange(8, dtype=torch.int64, device=packed.device)) & 1)).to(dtype)
    return torch.nn.functional.embedding(packed.to(torch.int64), table)


class RademacherProjector:
    """A seeded ±1 Johnson–Lindenstrauss map Φ(x) = x R / √d, R ∈ {±1}^{n_in × d}.

    Entry R[r, c] is bit c mod 32 of a counter-based hash of (seed, r, c // 32): two rounds of
    MurmurHash3's finaliser over the word index r·⌈d/32⌉ + c//32, in exact int64 arithmetic (no
    product exceeds 2⁴⁹). So R is the same on every device (checked bit for bit, CPU vs GPU), for
    every batch size and block size, and any row range can be generated where it is needed.
    (torch.Generator streams on the CPU would cost minutes per call at LESS's size: P·d ≈ 5.8·10¹⁰
    entries for Pythia-160M with r = 128.)

    Three ways to hold R, chosen per device on first use (all give the same R):
      - dense cache in ``compute_dtype`` when n_in·d·4 bytes ≤ ``cache_bytes`` (default 1 GiB);
      - else packed bits (n_in·d/8 bytes) when that is ≤ ``bits_cache_bytes`` (default 8 GiB),
        unpacked to ±1 block by block per call;
      - else regenerated block by block per call (hash + unpack).
    ``block_rows`` rows of R are materialised at a time (default: :meth:`rows_per_block`). In the
    last two modes each call pays for materialising all of R once, whatever the batch, so project
    many examples per call; the first call also builds the bit cache and compiles (timings:
    benchmarks/bench_less.py).

    ``compute_dtype``: the matmul's input dtype (float32 default; bfloat16 halves the traffic, cosine
    ≥ 0.99999 to float32 at LESS's size); the result is float32; any enclosing autocast is off.
    ``compile``: fuse hashing and unpacking with ``torch.compile`` (None: on CUDA only); checked
    against the eager result on first use, and dropped with a warning if it fails or differs.
    """

    def __init__(
        self,
        n_in: int,
        d: int,
        seed: int = 0,
        block_rows: int | None = None,
        cache_bytes: int = 1 << 30,
        bits_cache_bytes: int = 8 << 30,
        compute_dtype: torch.dtype = torch.float32,
        compile: bool | None = None,
    ):
        if n_in <= 0 or d <= 0:
            raise ValueError(f"n_in and d must be positive, got {n_in}, {d}")
        self.n_in, self.d, self.seed = int(n_in), int(d), int(seed)
        self.words = -(-self.d // 32)  # hash words per row
        self._given_rows = int(block_rows) if block_rows else None
        self.block_rows = self.rows_per_block("cpu")
        self.cache_bytes, self.bits_cache_bytes = int(cache_bytes), int(bits_cache_bytes)
        self.compute_dtype = compute_dtype
        self.compile = compile
        s = self.seed & ((1 << 64) - 1)
        self._k1 = _fmix32((s & _M32) ^ 0x9E3779B9)
        self._k2 = _fmix32(((s >> 32) ^ 0x7F4A7C15) ^ _fmix32(self._k1 ^ 0x85EBCA77))
        self._cache: dict[tuple, tuple[str, torch.Tensor | None]] = {}
        self._fns: dict[tuple, object] = {}

    def rows_per_block(self, device) -> int:
        """Rows of R materialised at a time: ``block_rows`` if given, else ~2²⁵ entries on a CPU and
        ~2²⁸ on a GPU. On a GPU each block is a few kernel launches of microseconds' work at 2²⁵
        (1,729 blocks at LESS's size): the host's launch rate, not the GPU, set the projection's
        time and it varied with the host; 2²⁸ (0.5 GB of bf16 signs) leaves 217 blocks."""
        if self._given_rows:
            return self._given_rows
        entries = 1 << (28 if torch.device(device).type == "cuda" else 25)
        return max(1, entries // (self.words * 32))

    @property
    def mode(self) -> str:
        """ "dense", "bits" or "regenerate" (what :meth:`project` uses)."""
        if self.n_in * self.d * 4 <= self.cache_bytes:
            return "dense"
        if self.n_in * self.words * 4 <= self.bits_cache_bytes:
            return "bits"
        return "regenerate"

    def _fn(self, name: str, eager, device: torch.device):
        """``eager`` or its compiled version (CUDA by default), checked on its first call."""
        use = self.compile if self.compile is not None else device.type == "cuda"
        key = (name, str(device))
        if not use or self._fns.get(key) is eager:
            return eager
        if key in self._fns:
            return self._fns[key]
        compiled = torch.compile(eager, dynamic=None)

        def checked(*args):
            try:
                out = compiled(*args)
                ok = torch.equal(out, eager(*args))
            except Exception as exc:  # no compiler on this node, an inductor bug, ...
                warnings.warn(
                    f"RademacherProjector: torch.compile of {name} failed ({exc!r}); using eager ops", stacklevel=3
                )
                ok, out = False, None
            if not ok:
                if out is not None:
                    warnings.warn(
                        f"RademacherProjector: compiled {name} differs from eager; using eager ops", stacklevel=3
                    )
                self._fns[key] = eager
                return eager(*args)
            self._fns[key] = compiled
            return out

        self._fns[key] = checked
        return checked

    def _bytes(self, r0: int, r1: int, device) -> torch.Tensor:
        """Rows [r0, r1) of R as hash bytes: ``(r1 − r0, 4·words)`` uint8."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        rows = torch.arange(r0, r1, dtype=torch.int64, device=device)
        key = rows[:, None] * self.words + torch.arange(self.words, dtype=torch.int64, device=device)
        return self._fn("hash", _hash_bytes, device)(key, self._k1, self._k2)

    def _unpack(self, packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._fn("unpack", _unpack_signs, packed.device)(packed, self.d, dtype)

    def matrix(self, r0: int = 0, r1: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Rows [r0, r1) of R (±1 entries, unscaled): ``(r1 − r0, d)``."""
        r1 = self.n_in if r1 is None else r1
        return self._unpack(self._bytes(r0, r1, device), dtype)

    def _held(self, device: torch.device) -> tuple[str, torch.Tensor | None]:
        key = (str(device), self.compute_dtype)
        if key not in self._cache:
            mode = self.mode
            held = None
            rows = self.rows_per_block(device)
            if mode == "dense":
                held = torch.empty(self.n_in, self.d, dtype=self.compute_dtype, device=device)
                for r0 in range(0, self.n_in, rows):
                    r1 = min(r0 + rows, self.n_in)
                    held[r0:r1] = self.matrix(r0, r1, device, self.compute_dtype)
            elif mode == "bits":
                held = torch.empty(self.n_in, 4 * self.words, dtype=torch.uint8, device=device)
                for r0 in range(0, self.n_in, rows):
                    r1 = min(r0 + rows, self.n_in)
                    held[r0:r1] = self._bytes(r0, r1, device)
            self._cache[key] = (mode, held)
        return self._cache[key]

    @property
    def compiled(self) -> dict[str, bool]:
        """``{"hash@cuda:0": True, ...}``: which steps run compiled, per device (after first use)."""
        eager = {"hash": _hash_bytes, "unpack": _unpack_signs}
        return {f"{n}@{dev}": fn is not eager[n] for (n, dev), fn in self._fns.items()}

    def clear_cache(self) -> None:
        self._cache.clear()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x) = x R / √d: ``(b, n_in)`` → ``(b, d)`` float32, on ``x``'s device."""
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected (b, {self.n_in}), got {tuple(x.shape)}")
        device = x.device
        mode, held = self._held(device)
        out = torch.zeros(x.shape[0], self.d, dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            xc = x.to(self.compute_dtype)
            if mode == "dense":
                out += xc @ held
            else:
                rows = self.rows_per_block(device)
                for r0 in range(0, self.n_in, rows):
                    r1 = min(r0 + rows, self.n_in)
                    if mode == "bits":
                        block = self._unpack(held[r0:r1], self.compute_dtype)
                    else:
                        block = self.matrix(r0, r1, device, self.compute_dtype)
                    out += xc[:, r0:r1] @ block
        return out / math.sqrt(self.d)
