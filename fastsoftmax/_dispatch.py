"""Dispatch policy: how every kernel call is cut into chunks and tiles.

The one home of the numbers that decide how work is split: how many row
chunks (one per numba thread), how many rows per tile, and below which size a
call runs on the calling thread alone.  The entry points read them from here
at call time (as ``_dispatch.NAME``), so a test can change one of them for
the duration of a test with ``monkeypatch.setattr``.

The values were measured on the development machines (see
``docs/performance.md``); they are policies, not part of any result: a
kernel's output depends on the tile and chunk counts it is given only
through the order of floating-point sums.
"""

from __future__ import annotations

from typing import NamedTuple

import numba

#: Bytes of X per tile of the fused kernel: the tile stays in the L2 cache
#: between the two GEMMs that read it.
TILE_BYTES = 384 * 1024
#: OpenBLAS multiplies small matrices (M N K up to about this) with a
#: dedicated kernel that is twice as fast on the skinny products of few
#: classes; tiles are kept under it when that leaves at least 32 rows.
SMALL_GEMM = 2**19
#: The fused kernels form a tile's logits X W^T and add the gradient's
#: products D X with their own micro-kernels (:mod:`fastsoftmax._tile_gemm`)
#: rather than BLAS for rows of at least TILE_GEMM_MIN_FEATURES features and
#: up to TILE_GEMM_MAX_CLASSES classes (logits columns): OpenBLAS packs the
#: tile before using each entry K times.  Measured on one core, float64,
#: GFLOP/s of BLAS against the micro-kernels: tiles of 62 x 784, K = 3
#: logits 7.3 / 35, products 8.3 / 24; K = 10 19 / 35 and 19 / 39; K = 64
#: 34 / 37 and 36 / 44; K = 128 36 / 36; (512, 64, 10) 22 / 29 and 19 / 33.
#: Whole calls, two threads: (1000000, 32, 4) 44 -> 31 ms, (100000, 40, 5)
#: 12 -> 8.7 ms; rows of 16 or 20 features gain nothing measurable
#: ((60000, 20, 3), (200000, 16, 10)) and stay on BLAS, which also spares
#: them the micro-kernels' compile time (about 1.5 s more on a cold cache
#: for the path that uses them).
TILE_GEMM_MIN_FEATURES = 32
TILE_GEMM_MAX_CLASSES = 64
#: float32 tiles use them from TILE_GEMM_MIN_FEATURES_FLOAT32 features up to
#: TILE_GEMM_MAX_CLASSES_FLOAT32 classes: on narrow float32 rows the lanes'
#: final sums cost more than BLAS's packing ((512, 64, 10) logits 51 against
#: 31 GFLOP/s), while 784 features gain (K = 10 logits 41 / 71, products
#: 23 / 77; K = 32 58 / 82 and 46 / 76).
TILE_GEMM_MIN_FEATURES_FLOAT32 = 256
TILE_GEMM_MAX_CLASSES_FLOAT32 = 32
#: Below this many multiply-adds (m n K) a loss call runs on one thread:
#: waking the others would cost more than it saves.  The logits entry point
#: applies it to m K.
SERIAL_WORK = 2**15
#: Logits per tile of loss_and_grad_logits (its float64 scratch stays in L2).
LOGITS_TILE_ENTRIES = 2**15
#: Below this many input elements (m K) the row-wise primitives run on one
#: thread.
SERIAL_ELEMENTS = 2**15
#: Elements per tile of the row-wise primitives (rows per tile: this divided
#: by K, at least 1).  Each chunk's two float64 buffers then take 4 KiB each
#: and stay in L1 with the tile's input and output between passes; measured
#: faster than 1024 to 16384 elements on K = 10 and as fast for K from 3 to
#: 1000.
TILE_ELEMENTS = 512

#: numba's worker threads go to sleep when idle, and waking them costs
#: about 100 µs (measured: a (1000, 50, 5) call took 57 µs back to back and
#: 134-208 µs after 2-10 ms of other work).  When no kernel call has ended
#: in the last WORKERS_ASLEEP_AFTER seconds (the caller does other work
#: between calls) and a call has fewer than INLINE_WORK multiply-adds
#: (m n K), its chunks run one after the other on the calling thread
#: instead: the same chunks into the same slabs, so the result is
#: bit-identical to the parallel run's.  Calls back to back run in parallel.
WORKERS_ASLEEP_AFTER = 1e-3
INLINE_WORK = 2**20

#: How many non-zeros ahead the sparse fused kernel prefetches the rows of
#: W (transposed) and of its gradient slab that it will read (measured on
#: 20-newsgroups-shaped TF-IDF data, one thread: 214 ms without, 145 ms at 8
#: and 16, 188 ms at 32).
SPARSE_PREFETCH_AHEAD = 8

#: The large-vocabulary kernel (:mod:`fastsoftmax._vocab`) replaces the fused
#: kernel for dense X when the fused kernel's per-thread float64 gradient
#: slabs (chunks K n 8 bytes) would exceed this many bytes and K is at least
#: ``VOCAB_MIN_CLASSES``: there the slabs cost more memory than the gradient
#: itself and adding into them a pass over K n per tile.  The benchmark's
#: mnist, tall, small and many-classes shapes stay on the fused kernel.
VOCAB_SLAB_BYTES = 64 * 2**20
VOCAB_MIN_CLASSES = 4096
#: Rows per super-tile of the large-vocabulary kernel: the most rows, in whole
#: row groups, whose (tile, K) logits buffer holds at most VOCAB_LOGITS_SHARE
#: of the gradients' own entries (dW's K n, plus dX's m n when it is
#: wanted), within [VOCAB_MIN_TILE, VOCAB_MAX_TILE].  The kernel's other
#: buffers are small, so the call's extra memory, outputs included, stays
#: near 1.2x the gradients' own size.  Larger tiles make the three GEMMs
#: faster (below 64 rows the dW products, whose inner dimension is the tile,
#: are memory-bound); measured at (4096, 1024, 32000) float32 on 2 threads,
#: loss and all gradients (bench/vocab_compare.py): 3.22 s with 192 rows,
#: 3.05 s with 256.
VOCAB_LOGITS_SHARE = 0.2
VOCAB_MIN_TILE = 64
VOCAB_MAX_TILE = 1024
#: Classes per logits / dW block, columns per dX block and rows per call of
#: the row numerics in the large-vocabulary kernel.  Fixed sizes, not one
#: block per thread: the result then does not depend on the thread count.
#: Row groups are what the soft-capped row numerics take at a time (the other
#: options work by blocks of classes, fastsoftmax._vocab_rows); their float64
#: scratch is threads x group x K entries.
VOCAB_CLASS_BLOCK = 512
VOCAB_COLUMN_BLOCK = 512
VOCAB_ROW_GROUP = 16

#: Tiles of the bfloat16 heads on PyTorch's products (fastsoftmax._torch_head):
#: at most TORCH_HEAD_ROWS rows by TORCH_HEAD_CLASSES classes of logits, the
#: numerics between the products by pieces of TORCH_HEAD_PIECE classes (a
#: piece's logits, PIECE x ROWS bfloat16, stay in a core's L2 between its
#: passes).  PyTorch's AMX matmuls lose speed on smaller blocks (measured
#: on a 2-core Sapphire Rapids VM: 1.4 TFLOP/s for 4096 x 1024 x 1024
#: products, 0.3-1.0 with 256-512 classes).
TORCH_HEAD_ROWS = 4096
TORCH_HEAD_CLASSES = 1024
TORCH_HEAD_PIECE = 128
TORCH_HEAD_DX_ROWS = 1024
#: The dX product D^T W reads the class-major logit gradients D transposed.
#: PyTorch's bfloat16 matmul (oneDNN) runs such a product at the plain
#: product's rate up to 1024 features (W's columns) and at about half of it
#: from 2048 (2048 rows x 1024 classes x 2048 features: 6.3-6.8 ms against
#: 3.3 ms); there a row-major copy of D (fastsoftmax._transpose) makes the
#: product a plain one.  Measured on the same VM, 1024 classes by slices of
#: 1024 rows, copies included: 1.23-1.25x faster for 1280-1536 features,
#: 1.39-1.50x for 2048, 1.56-1.83x for 4096; 0.62-0.81x (slower) for 512-1024.
TORCH_HEAD_ROW_MAJOR_FEATURES = 1280
#: The copies go by tiles of TORCH_HEAD_TRANSPOSE_BLOCK x same blocks of 4 x
#: 4 entries: 0.47 ms for 1024 x 2048 entries, 0.55-0.60 with 32 or 64.
TORCH_HEAD_TRANSPOSE_BLOCK = 16
#: With those copies and one row tile, the dX product takes
#: TORCH_HEAD_DX_CLASSES classes (whole blocks) at a time: each product's
#: (rows, n) result is added into the float32 accumulator, 1.1 ms for (1024,
#: 2048) entries, a quarter as often as per block (the copies then hold m x
#: min(K, TORCH_HEAD_DX_CLASSES) entries, at most 32 MB).  2.39 against 2.45
#: s at (2048, 2048, 128256) (bench/head_ab.py, same VM).
TORCH_HEAD_DX_CLASSES = 4096
#: Whether dW's pages are written once on all threads before the products
#: that fill it (fastsoftmax._touch): 2.26-2.35 s against 2.41-2.53 s at
#: (2048, 2048, 128256), 0.74-0.85 either way at (4096, 1024, 32000)
#: (bench/head_ab.py, same VM).
TORCH_HEAD_TOUCH_PAGES = True

#: ``solver="auto"`` takes Newton-Cholesky when the number of parameters
#: N = K (n + fit_intercept) is at most this, Newton-CG above.  Measured
#: (bench/newton_compare.py, noisy shared machine): building the Hessian
#: costs about (K + 1)(n + 1) / 8 Hessian-vector products (m = 20000:
#: 8.5 at N = 42, 51 at N = 210, 84 at N = 650), and Newton-Cholesky needs
#: about 0.7 times Newton-CG's iterations, while Newton-CG spends 6 (iris,
#: standardised data) to 40 (raw digits) products per iteration: the full
#: Hessian pays up to N of a few hundred on badly scaled data, and less on
#: well scaled data.  Raw iris (N = 15) and wine (N = 42): Cholesky 4-6x
#: faster; digits (N = 650): Newton-CG 2.6x faster.  The Hessian is N^2 float64.
AUTO_CHOLESKY_MAX_PARAMS = 200
#: Above AUTO_CHOLESKY_MAX_PARAMS, ``solver="auto"`` takes L-BFGS instead of
#: Newton-CG when the features' standard deviations differ by at most this
#: factor (``fastsoftmax._newton.scale_spread``).  Measured (bench/test_fit.py
#: data, tol 1e-8, a loaded 2-core machine): standardised digits x10, spread
#: 1: L-BFGS 3.1 s (189 it) against Newton-CG 6.6 s; raw digits x10, spread
#: 277: L-BFGS 124 s (7052 it) against Newton-CG 9.8 s.  Applies only above
#: PCG_BLOCK_MAX_WIDTH: with its block preconditioner Newton-CG is faster on
#: both (idle: standardised digits 0.6 s against L-BFGS 0.92 s); on the
#: benchmark's standardised (60000, 784, 10) set, diagonal-preconditioned
#: Newton-CG took 2.3 s against L-BFGS 1.9 s.
AUTO_LBFGS_MAX_SCALE_SPREAD = 10.0

#: Newton-CG preconditions with the Hessian's per-class (n', n') blocks when
#: n' = n + fit_intercept is at most this, with its diagonal above (building
#: the blocks costs about n' / 4 Hessian-vector products on the rows used).
#: The blocks are estimated from every (m // PCG_BLOCK_SAMPLE_ROWS)-th row:
#: measured on standardised digits x10 (m = 17970, n' = 65, K = 10), 4096
#: rows kept Newton-CG at 10 iterations and cut the fit from 0.92 to 0.52 s;
#: 1024 rows needed 13 iterations and more products.
PCG_BLOCK_MAX_WIDTH = 128
PCG_BLOCK_SAMPLE_ROWS = 4096
#: On CSR X, Newton-CG's diagonal preconditioner is not the Hessian's
#: diagonal d itself but ``PCG_SPARSE_DIAGONAL_MIX d + (1 -
#: PCG_SPARSE_DIAGONAL_MIX) l2``, a mix of it with the penalty's curvature,
#: as Hsia, Chiang and Lin ("Preconditioned conjugate gradient methods in
#: truncated Newton frameworks for large-scale linear classification", ACML
#: 2018) mix the diagonal with the identity in LIBLINEAR.  Features whose
#: data curvature dwarfs l2 keep their relative weights; rare ones (a few
#: non-zeros, most of a text vocabulary) get less weight than the plain
#: diagonal gives them.  Measured (2-core Sapphire Rapids VM, 2 threads,
#: time for SoftmaxRegression to reach the best objective to 1e-6 relative,
#: mix 0.03 against the plain diagonal): docstring corpus C = 1, 10, 100:
#: 0.26 / 0.33, 0.41 / 0.83, 1.26 / 1.50 s; 20-newsgroups shape C = 1, 10,
#: 100: 2.28 / 2.61, 3.95 / 5.07, 9.8 / 11.2 s; (4000, 60000) K = 10, C = 10,
#: 100: 0.59 / 0.80, 0.82 / 1.52 s; (50000, 47236) K = 50, C = 10: 15.4 /
#: 11.5 s (slower there; to tol 1e-9 26.8 / 33.2 s).  Mixes 0.1 and 0.01
#: (and 0.003, tried on the docstrings) were slower than 0.03 on more of
#: these.  Dense X keeps the plain diagonal: on (20000, 300) features
#: scaled 10^-2..10^2 the mix took 0.21 against 0.16 s (its small-scale
#: features have curvatures near l2), on standardised (60000, 784) the same
#: time.
PCG_SPARSE_DIAGONAL_MIX = 0.03
#: Newton-CG builds its blocks at the first Newton step and again after a
#: step whose conjugate gradients took more than this many Hessian products;
#: otherwise it reuses the last ones (``fastsoftmax._newton.BlockInverses``).
PCG_BLOCK_AFTER_CG_STEPS = 10
#: The Newton solvers stop (unconverged, with a ConvergenceWarning from the
#: estimator) after this many steps in a row that did not lower the
#: objective: tol is then below what the working dtype can resolve (float32
#: X with tol=1e-10 ran to max_iter=10000, 350 s, before this rule).
NEWTON_MAX_STALLED_STEPS = 5
#: A step that lowers the objective by less than this fraction of it (16
#: float64 ulps) counts as not lowering it for ``NEWTON_MAX_STALLED_STEPS``:
#: at the rounding level the objective moves by a few ulps either way, and a
#: decrease of 2 ulps had restarted the count (float32 CSR X at tol 1e-10:
#: 227 Newton steps before the stop, instead of 24).
NEWTON_STALL_SLACK = 16 * 2.0 ** -52
#: Bytes of the full-Hessian kernel's products of features per tile (a block
#: of columns of its packed sums at a time): bounded for wide X, where the
#: n~ (n~ + 1) / 2 products of a row alone can take megabytes.
HESSIAN_PRODUCT_BYTES = 2 * 2**20
#: Up to this many pairs of classes (five classes, or the reduced system of
#: six) the full-Hessian kernel sums each entry of a pair's block directly,
#: over the feature-major tile, rather than by one GEMM of the pairs'
#: weights with the products of features.  Measured on one thread, random
#: float64 data, direct against the GEMM: (1780, 13, 3) reduced system 0.12
#: against 0.41 ms (of the products) or 0.25 ms (one GEMM per pair, the
#: earlier choice for up to three pairs); (5000, 50, 5) 10 pairs 6.7 against
#: 9.5 ms; (20000, 30, 6) 15 pairs 17.0 against 20.3 ms, 21 pairs 23.0
#: against 21.2 ms; (1797, 64, 10) 45 pairs 17.0 against 14.1 ms.  With the
#: direct sums' smaller tiles and blocks of four (``HESSIAN_DIRECT_TILE``,
#: 2-core Sapphire Rapids VM): 15 pairs ((20000, 30, 6)) 9.8 against
#: 13.1 ms, 21 pairs ((20000, 30, 7)) 14.1 against 15.2 ms, 28 pairs
#: ((5000, 50, 8)) 12.1 against 8.9 ms, 45 pairs ((1797, 64, 10)) 12.0
#: against 6.8 ms: the limit stays at 15.
HESSIAN_DIRECT_MAX_PAIRS = 15
#: Rows per tile of the full-Hessian kernel's direct sums: its sums run over
#: the tile's rows, and the n~ + 1 rows it reads again for every pair
#: (8 (n~ + 1) R bytes) fit a 48 KiB L1 cache at 128 rows for n~ up to
#: about 45 (and stay nearer than at 1024 rows beyond).  Measured on one thread
#: (2-core Sapphire Rapids VM, random float64 data, reduced system), both
#: with the blocks of four, against the tile of ``TILE_BYTES`` (the blocks
#: of four alone gained 15-25% on the wider shapes, nothing on
#: (1780, 13, 3)): (1780, 13, 3) 165 -> 81 us, (5000, 50, 5)
#: 5.9 -> 4.4 ms, (20000, 20, 3) 2.5 -> 1.4 ms, (20000, 30, 6) 15.5 ->
#: 9.4 ms; 64 and 256 rows were as fast or slower on all of them.
HESSIAN_DIRECT_TILE = 128
#: The compiled Newton-Cholesky loop records the objective of at most this
#: many steps (its ``history``; the loop itself runs to ``max_iter``).
NEWTON_HISTORY = 10_000
#: Passes over parameter-sized arrays run compiled and parallel
#: (:mod:`fastsoftmax._vectors`: Newton-CG's vector updates and Jacobi
#: preconditioner, the finish of a Hessian product and of every gradient,
#: ``loss_and_grad``'s and the Dask one's included) from this many entries on,
#: in NumPy below (where a pass takes microseconds and waking the worker
#: threads would cost more).  Measured on 20-newsgroups-shaped data
#: (N = 2.6 M): NumPy's passes took about 30 ms a CG step beside a 46 ms
#: Hessian product.
COMPILED_VECTOR_MIN_ENTRIES = 2**16
#: Entries (columns of the (K, n) arrays) per block of those passes; each
#: block's sums are added in block order (thread-count independent).
COMPILED_VECTOR_BLOCK = 1024
#: Side of the square tiles of the compiled transposition of parameter-sized
#: (K, n) / (n, K) float32 or float64 arrays (:func:`fastsoftmax._vectors.transpose_into`):
#: a 32 x 32 tile (8 KiB) is read and written within the L1 cache.
TRANSPOSE_TILE = 32
#: Rows per tile when ``HessianProduct.class_blocks`` builds the Hessian's
#: per-class blocks in NumPy (a tile's probabilities and two float64 copies
#: of its rows are the extra memory: 2 x 4096 x (n + 1) float64).
BLOCK_TILE_ROWS = 4096

#: Columns per block when the sparse kernel adds its chunks' column slabs
#: into the gradient (blocks run in parallel, each in chunk order).
SPARSE_COMBINE_COLUMNS = 2048
#: The sparse fused kernel gives every chunk a dense (n, K) float64 gradient
#: slab when all of them together take at most this many bytes, and slabs of
#: only the columns each chunk touches (through a column map) otherwise.
#: The dense slabs save the map's lookup on every non-zero (measured on
#: 20-newsgroups-shaped TF-IDF data, one thread: the scatter of the gradient
#: took 27 ms instead of 47 ms); the column maps bound the memory on many
#: threads (20 newsgroups: 21 MB of dense slab per thread).
SPARSE_DENSE_SLAB_BYTES = 64 * 2**20
#: Newton-CG on CSR X (the fused method) makes its Hessian products and
#: diagonal by columns (:mod:`fastsoftmax._sparse_columns`), from a copy of X's
#: transpose kept for the fit, when that copy takes at most this many bytes;
#: above it, with the row kernel's slabs.  Measured on 20-newsgroups-shaped
#: data (idle, 2 threads): a product took 20 ms by columns, 34 ms by rows;
#: the copy (22 MB there, about X's size) took 22 ms to make.  (Back to
#: back, in a first prototype; medians of calls 0.05 s apart in the
#: library: 28 against 35 ms.)
SPARSE_TRANSPOSED_BYTES = 2**30
#: ... and when X has at most this many rows per column.  By columns, a
#: product gathers the rows of an (m, K) array where by rows it scatters
#: into (n, K) slabs: a win while the (m, K) array is the smaller one, a loss
#: when it is much larger.  Measured (idle, 2 threads, products and diagonal
#: by columns against by rows): 20-newsgroups-shaped data, m / n = 0.09,
#: 28 against 35 ms and 14 against 21 ms; the docstrings corpus, m / n =
#: 0.76, 8.3 against 8.1 ms and 3.6 against 3.3 ms (with pauses; the fit
#: 0.27 against 0.32 s); RCV1-sized data (200000 x 47236, K = 50), m / n =
#: 4.2, 507 against 378 ms and 626 against 184 ms.
SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN = 1.0
#: Fixed number of parts (about equal numbers of non-zeros) that the column
#: passes split X's rows and X^T's rows into; parts run in parallel and their
#: sums are added in part order, so the results do not depend on the thread
#: count.
SPARSE_COLUMN_PARTS = 128
#: The column passes run their parts in this many tasks a thread (each task
#: a run of consecutive parts, with its own tile scratch).  One task a
#: thread left the work serial whenever the other worker woke up late: in a
#: docstrings fit (0.76 M non-zeros, K = 8, 2 threads, parts of 1-3 ms)
#: the fit took 0.46 s with 2 tasks and 0.28 s with 16.
SPARSE_COLUMN_TASKS_PER_THREAD = 8
#: Logits per tile of the column gradient pass (:func:`sparse_column_tile_rows`):
#: its three float64 tile buffers take 96 KiB a task.
SPARSE_COLUMN_TILE_ENTRIES = 2**12


def chunk_count(m: int) -> int:
    """How many row chunks (and gradient slabs) a parallel kernel uses for m rows.

    One per numba thread, read at call time so ``numba.set_num_threads`` is
    honoured; never more than the number of rows.
    """
    return max(1, min(m, numba.get_num_threads()))


def run_inline(work: int, idle_seconds: float) -> bool:
    """Whether a parallel call of ``work`` multiply-adds runs its chunks on the
    calling thread, ``idle_seconds`` after the previous kernel call ended."""
    return work < INLINE_WORK and idle_seconds > WORKERS_ASLEEP_AFTER


def tile_rows(n: int, K: int, itemsize: int) -> int:
    """Rows per tile of the fused kernel for n features, K classes (measured choices)."""
    rows = TILE_BYTES // (n * itemsize)
    if rows * n * K > SMALL_GEMM and SMALL_GEMM // (n * K) >= 32:
        rows = SMALL_GEMM // (n * K)
    return int(min(1024, max(16, rows)))


def tile_gemm(n: int, K: int, itemsize: int) -> bool:
    """Whether the fused kernels' per-tile products with K classes (logits
    columns) and n features of ``itemsize`` bytes use the micro-kernels of
    :mod:`fastsoftmax._tile_gemm` rather than BLAS."""
    if itemsize == 8:
        return K <= TILE_GEMM_MAX_CLASSES and n >= TILE_GEMM_MIN_FEATURES
    return K <= TILE_GEMM_MAX_CLASSES_FLOAT32 and n >= TILE_GEMM_MIN_FEATURES_FLOAT32


def hessian_plan(nt: int, K: int, classes: int) -> tuple[int, int, bool]:
    """``(tile, features, direct)`` of the full-Hessian kernel
    (:func:`fastsoftmax._hessian_full.full_chunk`) for rows of
    nt = n + fit_intercept float64 entries and K classes: rows per tile from
    ``TILE_BYTES`` over a row's weights, entries and probabilities (64 to
    1024), and the values of l whose products x_l x_l' one block forms, so
    that a tile's products (tile x features x nt float64) stay within
    ``HESSIAN_PRODUCT_BYTES`` (at least one); and whether its sums over the
    pairs of ``classes`` classes are summed directly (at most
    ``HESSIAN_DIRECT_MAX_PAIRS`` pairs); the direct sums take tiles of
    ``HESSIAN_DIRECT_TILE`` rows instead of the tile above."""
    direct = classes * (classes + 1) // 2 <= HESSIAN_DIRECT_MAX_PAIRS
    per_row = K * (K + 1) // 2 + nt + 2 * K + 3
    tile = int(min(1024, max(64, TILE_BYTES // (8 * per_row))))
    if direct:
        tile = HESSIAN_DIRECT_TILE
    features = int(max(1, min(nt, HESSIAN_PRODUCT_BYTES // (8 * tile * nt))))
    return tile, features, direct


def hessian_chunks(m: int, classes: int, nt: int) -> int:
    """Row chunks of the full-Hessian kernel over the pairs of ``classes``
    classes, m rows of nt entries: one (run serially) while its sums (about
    m B Q multiply-adds, B = classes (classes + 1) / 2, Q = nt (nt + 1) / 2)
    stay under ``SERIAL_WORK``, else one per thread."""
    work = m * (classes * (classes + 1) // 2) * (nt * (nt + 1) // 2)
    return 1 if work < SERIAL_WORK else chunk_count(m)


def loss_chunks(m: int, n: int, K: int) -> int:
    """Row chunks of a dense fused loss-and-gradient call with m rows, n
    features and K classes: one (run serially) below ``SERIAL_WORK``
    multiply-adds, else one per thread."""
    chunks = chunk_count(m)
    return 1 if chunks == 1 or m * n * K < SERIAL_WORK else chunks


def product_chunks(m: int, n: int, K: int) -> int:
    """Row chunks of a dense fused Hessian-vector product with m rows, n
    features and K classes (its GEMMs have 2K columns): one (run serially)
    below ``SERIAL_WORK`` multiply-adds, else one per thread."""
    chunks = chunk_count(m)
    return 1 if chunks == 1 or 2 * m * n * K < SERIAL_WORK else chunks


def logits_tile_rows(K: int) -> int:
    """Rows per tile of :func:`fastsoftmax.loss_and_grad_logits` for K classes."""
    return int(min(1024, max(16, LOGITS_TILE_ENTRIES // K)))


def primitive_tile_rows(K: int) -> int:
    """Rows per tile of the row-wise primitives for rows of K entries."""
    return max(1, TILE_ELEMENTS // K)


def sparse_dense_slabs(n: int, K: int, chunks: int) -> bool:
    """Whether the sparse fused kernel's ``chunks`` gradient slabs are dense (n, K)."""
    return chunks * n * K * 8 <= SPARSE_DENSE_SLAB_BYTES


def sparse_column_tasks(m: int) -> int:
    """Tasks of the column passes (:data:`SPARSE_COLUMN_TASKS_PER_THREAD`
    a thread, at most one a part)."""
    return max(1, min(SPARSE_COLUMN_TASKS_PER_THREAD * chunk_count(m), SPARSE_COLUMN_PARTS))


def sparse_column_tile_rows(K: int) -> int:
    """Rows per tile of the column gradient pass for K classes."""
    return int(min(1024, max(16, SPARSE_COLUMN_TILE_ENTRIES // K)))


def sparse_by_columns(m: int, n: int, nnz: int, itemsize: int, index_itemsize: int) -> bool:
    """Whether Newton-CG works by columns on CSR X (m, n) with ``nnz``
    non-zeros of ``itemsize`` bytes and indices of ``index_itemsize`` bytes:
    whether X has at most ``SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN`` rows per
    column and a copy of X^T (n rows) fits in ``SPARSE_TRANSPOSED_BYTES``."""
    return m <= SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN * n and \
        nnz * (itemsize + index_itemsize) + (n + 1) * index_itemsize <= SPARSE_TRANSPOSED_BYTES


def compiled_vectors(entries: int) -> bool:
    """Whether a pass over a parameter-sized array of ``entries`` entries runs
    compiled and parallel (:mod:`fastsoftmax._vectors`) rather than in NumPy."""
    return entries >= COMPILED_VECTOR_MIN_ENTRIES


class HeadPlan(NamedTuple):
    """How :func:`fastsoftmax._torch_head.head_sums` computes a bfloat16 head
    on PyTorch's products (:func:`torch_head_plan`)."""

    rows: int  #: rows per tile of logits
    single: bool  #: one tile holds every row
    classes: int  #: classes per block of logits
    piece: int  #: classes per piece of the numerics between the products
    dx_rows: int  #: rows per slice of the dX product
    keep_logits: bool  #: the first pass's logits kept in dW's memory (not computed again)
    row_major_dx: bool  #: whether the dX product reads a row-major copy of D
    dx_classes: int  #: classes per dX product (whole blocks, or all K)
    transpose_block: int  #: tile edge of the row-major copies (fastsoftmax._transpose)
    touch_pages: bool  #: dW's pages written once before the products fill it


def torch_head_plan(m: int, n: int, K: int, want_dw: bool) -> HeadPlan:
    """The plan of a bfloat16 head on PyTorch's products
    (:func:`fastsoftmax._torch_head.head_sums`) for m samples, n features, K
    classes, with or without dW: fixed tile sizes, bounded by the
    problem's; the logits kept in dW's memory when one row tile holds every
    row and m <= n (a block's logits then fit in its own rows of dW); from
    ``TORCH_HEAD_ROW_MAJOR_FEATURES`` features a row-major copy of the logit
    gradients for the dX product, with one row tile for
    ``TORCH_HEAD_DX_CLASSES`` classes at a time."""
    rows = int(min(m, TORCH_HEAD_ROWS))
    classes = int(min(K, TORCH_HEAD_CLASSES))
    single = rows >= m
    row_major = n >= TORCH_HEAD_ROW_MAJOR_FEATURES
    group = max(1, TORCH_HEAD_DX_CLASSES // classes) * classes if row_major and single \
        else classes
    return HeadPlan(rows, bool(single), classes, int(min(K, TORCH_HEAD_PIECE)),
                    int(min(m, TORCH_HEAD_DX_ROWS)), bool(want_dw and single and m <= n),
                    row_major, int(min(K, group)),
                    int(TORCH_HEAD_TRANSPOSE_BLOCK), bool(want_dw and TORCH_HEAD_TOUCH_PAGES))


def bfloat16_head(classes: int, softcapped: bool, degenerate: bool,
                  bfloat16_hardware: bool) -> bool:
    """Whether :mod:`fastsoftmax.torch` computes a bfloat16 head of ``classes``
    classes on PyTorch's bfloat16 products (:mod:`fastsoftmax._torch_head`)
    rather than in float32: where those products run on bfloat16 hardware
    (``bfloat16_hardware``: AMX or AVX-512 BF16,
    :func:`fastsoftmax._torch_head.fast_bfloat16_products`; elsewhere
    PyTorch's bfloat16 matmuls are slower than float32 ones),
    without soft-capping (its capped logits need the float32 path's row
    numerics), with at least one class and a well-defined mean
    (``degenerate``: no kept sample, or their weights sum to zero)."""
    return bfloat16_hardware and classes > 0 and not softcapped and not degenerate


def large_vocabulary(n: int, K: int, chunks: int) -> bool:
    """Whether a dense fused call with n features and K classes uses the large-vocabulary kernel."""
    return K >= VOCAB_MIN_CLASSES and chunks * K * n * 8 > VOCAB_SLAB_BYTES


def vocab_plan(m: int, n: int, K: int, with_dx: bool) -> dict:
    """Block sizes of the large-vocabulary kernel (keyword arguments of
    :func:`fastsoftmax._vocab.vocab_sums` besides ``workers``) for (m, n) X
    and K classes, with or without the input gradient dX."""
    entries = K * n + (m * n if with_dx else 0)
    tile = int(VOCAB_LOGITS_SHARE * entries / K) // VOCAB_ROW_GROUP * VOCAB_ROW_GROUP
    tile = min(VOCAB_MAX_TILE, max(VOCAB_MIN_TILE, tile))
    return {"tile": int(tile), "class_block": int(VOCAB_CLASS_BLOCK),
            "column_block": int(VOCAB_COLUMN_BLOCK), "group": int(VOCAB_ROW_GROUP)}


def pcg_diagonal_mix(sparse: bool) -> float:
    """The weight of the Hessian's diagonal in Newton-CG's diagonal
    preconditioner (the penalty's curvature takes the rest): see
    ``PCG_SPARSE_DIAGONAL_MIX``; 1.0 (the plain diagonal) for dense X."""
    return PCG_SPARSE_DIAGONAL_MIX if sparse else 1.0
