/* The Python binding of the native core: thin argument parsing around core.h, GIL released during work. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "quants.h"
#include "engine.h"

/* The kernels read blocks and f16/f32 values through typed pointers, which C requires to be aligned; a buffer
   that is not (a slice of a byte blob at an odd offset) is copied first. GGUF tensor data is always aligned. */
static const void *aligned(const Py_buffer *b, void **copy) {
    *copy = NULL;
    if (((uintptr_t)b->buf & 15) == 0) return b->buf;
    *copy = malloc(b->len ? (size_t)b->len : 1);
    if (*copy) memcpy(*copy, b->buf, (size_t)b->len);
    return *copy;
}

/* A core call's return code as the binding's result: None, MemoryError for -3, ValueError(message) otherwise. */
static PyObject *none_or_error(int rc, const char *message) {
    if (rc == -3) return PyErr_NoMemory();
    if (rc) {
        PyErr_SetString(PyExc_ValueError, message);
        return NULL;
    }
    Py_RETURN_NONE;
}

static int type_size(int t) { return t == TK_F32 ? 4 : (t == TK_F16 || t == TK_BF16) ? 2 : 0; }

static PyObject *py_convert(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    int st, dt, nthreads = 1;
    if (!PyArg_ParseTuple(args, "y*iw*i|i", &src, &st, &dst, &dt, &nthreads)) return NULL;
    PyObject *ret = NULL;
    int ss = type_size(st), ds = type_size(dt);
    if (!ss || !ds) {
        PyErr_Format(PyExc_ValueError, "unsupported conversion %d -> %d", st, dt);
    } else if (!PyBuffer_IsContiguous(&src, 'C') || !PyBuffer_IsContiguous(&dst, 'C')) {
        PyErr_SetString(PyExc_ValueError, "buffers must be C-contiguous");
    } else if (src.len % ss || dst.len / ds != src.len / ss) {
        PyErr_SetString(PyExc_ValueError, "source and destination hold different numbers of elements");
    } else {
        size_t n = (size_t)(src.len / ss);
        Py_BEGIN_ALLOW_THREADS
        tk_convert(src.buf, (enum tk_type)st, dst.buf, (enum tk_type)dt, n, nthreads);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return ret;
}

/* Checks shared by quantize and dequantize: a known type, whole blocks per row, contiguous buffers whose sizes fit
   a matrix of nrows x n_per_row (float_bytes per element on the float side). Sets a Python error and returns 0. */
static int check_matrix(int type, long long nrows, long long n_per_row, const Py_buffer *floats, int float_bytes,
                        const Py_buffer *blocks) {
    const struct tk_type_traits *t = tk_traits(type);
    if (!t) {
        PyErr_Format(PyExc_ValueError, "unknown type id %d", type);
    } else if (n_per_row <= 0 || nrows < 0 || n_per_row % t->block_size) {
        PyErr_Format(PyExc_ValueError, "row length %lld is not a multiple of %s's block size %lld", n_per_row,
                     t->name, (long long)t->block_size);
    } else if (!PyBuffer_IsContiguous(floats, 'C') || !PyBuffer_IsContiguous(blocks, 'C')) {
        PyErr_SetString(PyExc_ValueError, "buffers must be C-contiguous");
    } else if (!float_bytes) {
        PyErr_SetString(PyExc_ValueError, "the float side must be F32, F16 or BF16");
    } else if ((size_t)floats->len != (size_t)(nrows * n_per_row) * (size_t)float_bytes ||
               (size_t)blocks->len != (size_t)nrows * tk_row_size(type, n_per_row)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the matrix shape");
    } else {
        return 1;
    }
    return 0;
}

/* quantize(type, src, src_type, dst, nrows, n_per_row, nthreads, imatrix=None) -> number of NaN/Inf values found
   (0 = done); imatrix: n_per_row float32 importance weights */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    Py_buffer src, dst, qw = {0};
    int type, src_type, nthreads = 1;
    long long nrows, n_per_row;
    if (!PyArg_ParseTuple(args, "iy*iw*LL|iz*", &type, &src, &src_type, &dst, &nrows, &n_per_row, &nthreads, &qw))
        return NULL;
    PyObject *ret = NULL;
    if (qw.buf && (size_t)qw.len != (size_t)n_per_row * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "the importance matrix must hold n_per_row float32 values");
    } else if (check_matrix(type, nrows, n_per_row, &src, type_size(src_type), &dst)) {
        int64_t bad = 0;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = tk_quantize_rows_imatrix(type, src.buf, src_type, dst.buf, nrows, n_per_row, nthreads, qw.buf, &bad);
        Py_END_ALLOW_THREADS
        if (rc == -3) PyErr_NoMemory();
        else if (rc == -4) PyErr_Format(PyExc_ValueError, "%s needs an importance matrix", tk_traits(type)->name);
        else ret = PyLong_FromLongLong(bad);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (qw.obj) PyBuffer_Release(&qw);
    return ret;
}

/* dequantize(type, src, dst_f32, nrows, n_per_row, nthreads) */
static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    int type, nthreads = 1;
    long long nrows, n_per_row;
    if (!PyArg_ParseTuple(args, "iy*w*LL|i", &type, &src, &dst, &nrows, &n_per_row, &nthreads)) return NULL;
    PyObject *ret = NULL;
    if (check_matrix(type, nrows, n_per_row, &dst, sizeof(float), &src)) {
        int oom;
        Py_BEGIN_ALLOW_THREADS
        void *copy;
        const void *sd = aligned(&src, &copy);
        if (sd) tk_dequantize_rows(type, sd, dst.buf, nrows, n_per_row, nthreads);
        free(copy);
        oom = sd == NULL;
        Py_END_ALLOW_THREADS
        ret = none_or_error(oom ? -3 : 0, "");
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *py_type_traits(PyObject *self, PyObject *noargs) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < TK_TYPE_COUNT; i++) {
        const struct tk_type_traits *t = tk_traits(i);
        if (!t) continue;
        PyObject *v = Py_BuildValue("(sLn)", t->name, (long long)t->block_size, (Py_ssize_t)t->type_size);
        PyObject *key = PyLong_FromLong(i);
        int bad = !v || !key || PyDict_SetItem(d, key, v) < 0;
        Py_XDECREF(key);
        Py_XDECREF(v);
        if (bad) { Py_DECREF(d); return NULL; }
    }
    return d;
}

static PyObject *py_count_nonfinite(PyObject *self, PyObject *args) {
    Py_buffer src;
    int type;
    if (!PyArg_ParseTuple(args, "y*i", &src, &type)) return NULL;
    int ss = type_size(type);
    int64_t bad = -1;
    if (ss && PyBuffer_IsContiguous(&src, 'C')) {
        Py_BEGIN_ALLOW_THREADS
        bad = tk_count_nonfinite(src.buf, (enum tk_type)type, (size_t)(src.len / ss));
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    if (bad < 0) {
        PyErr_SetString(PyExc_ValueError, "count_nonfinite takes contiguous F32, F16 or BF16 data");
        return NULL;
    }
    return PyLong_FromLongLong(bad);
}

/* activations(wtype, x_f32, n, cols) -> (vec_dot_type, bytes): the activation rows as the matmul kernels see them */
static PyObject *py_activations(PyObject *self, PyObject *args) {
    Py_buffer x;
    int wtype;
    long long n, cols;
    if (!PyArg_ParseTuple(args, "iy*LL", &wtype, &x, &n, &cols)) return NULL;
    const struct tk_dot_traits *d = tk_dot_traits(wtype);
    PyObject *ret = NULL;
    if (!d || n < 0 || cols <= 0 || (size_t)x.len != (size_t)(n * cols) * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "bad weight type or activation shape");
    } else {
        size_t arow = tk_row_size(d->vec_dot_type, cols);
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(arow * (size_t)n));
        if (out && tk_convert_activations(wtype, x.buf, n, cols, PyBytes_AS_STRING(out)) == 0)
            ret = Py_BuildValue("(iN)", d->vec_dot_type, out);
        else if (out) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "row length is not a multiple of the activation block size");
        }
    }
    PyBuffer_Release(&x);
    return ret;
}

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    const int simd = tk_use_simd();
    tk_set_force_scalar(0);
    PyObject *r = Py_BuildValue("{s:O,s:O,s:O}", "f16c_avx2", tk_cpu_has_f16c() ? Py_True : Py_False, "avxvnni",
                                tk_use_vnni() ? Py_True : Py_False, "avx512vnni", tk_use_avx512() ? Py_True : Py_False);
    tk_set_force_scalar(!simd);
    return r;
}

static PyObject *py_set_isa_limit(PyObject *self, PyObject *arg) {
    const long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred()) return NULL;
    tk_set_isa_limit((int)level);
    Py_RETURN_NONE;
}

static PyObject *py_set_l2_bytes(PyObject *self, PyObject *arg) {
    const long long bytes = PyLong_AsLongLong(arg);
    if (bytes == -1 && PyErr_Occurred()) return NULL;
    if (bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "set_l2_bytes: bytes must be >= 0");
        return NULL;
    }
    tk_set_l2_bytes((size_t)bytes);
    Py_RETURN_NONE;
}

static PyObject *py_set_gelu_fp16(PyObject *self, PyObject *arg) {
    const int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    tk_set_gelu_fp16(on);
    Py_RETURN_NONE;
}

static PyObject *py_set_force_scalar(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    tk_set_force_scalar(on);
    Py_RETURN_NONE;
}

/* matmul(wtype, w, rows, cols, x_f32, n, y_f32, nthreads=1): y[n][rows] = x[n][cols] · W[rows][cols]ᵀ (tk_matmul) */
static PyObject *py_matmul(PyObject *self, PyObject *args) {
    Py_buffer w, x, y;
    int wtype, nthreads = 1;
    long long rows, cols, n;
    if (!PyArg_ParseTuple(args, "iy*LLy*Lw*|i", &wtype, &w, &rows, &cols, &x, &n, &y, &nthreads)) return NULL;
    PyObject *ret = NULL;
    const struct tk_type_traits *t = tk_traits(wtype);
    if (!t || !tk_dot_traits(wtype)) {
        PyErr_Format(PyExc_ValueError, "no matrix product for type id %d", wtype);
    } else if (rows < 0 || n < 0 || cols <= 0 || cols % t->block_size ||
               cols % tk_traits(tk_dot_traits(wtype)->vec_dot_type)->block_size) {
        PyErr_Format(PyExc_ValueError, "row length %lld does not suit %s's blocks", cols, t->name);
    } else if (!PyBuffer_IsContiguous(&w, 'C') || !PyBuffer_IsContiguous(&x, 'C') || !PyBuffer_IsContiguous(&y, 'C')) {
        PyErr_SetString(PyExc_ValueError, "buffers must be C-contiguous");
    } else if ((size_t)w.len != (size_t)rows * tk_row_size(wtype, cols) ||
               (size_t)x.len != (size_t)(n * cols) * sizeof(float) ||
               (size_t)y.len != (size_t)(n * rows) * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the shapes");
    } else {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        void *copy;
        const void *wd = aligned(&w, &copy);
        rc = wd ? tk_matmul(wtype, wd, rows, cols, (const float *)x.buf, n, (float *)y.buf, nthreads) : -3;
        free(copy);
        Py_END_ALLOW_THREADS
        ret = none_or_error(rc, "matmul: unsupported type or shape");
    }
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return ret;
}

/* ---- the forward pass: an Engine capsule (the caller keeps the tensor memory alive) and KV cache capsules ---- */

static void engine_destroy(PyObject *cap) { tk_engine_free(PyCapsule_GetPointer(cap, "tk_engine")); }
static void kv_destroy(PyObject *cap) { tk_kv_free(PyCapsule_GetPointer(cap, "tk_kv")); }

/* The fields of struct tk_hparams by name: engine_new takes them as a dict with exactly these keys. */
#define HP_FIELD(name, kind) {#name, offsetof(struct tk_hparams, name), kind}
static const struct { const char *name; size_t offset; char kind; } HPARAM_FIELDS[] = {
    HP_FIELD(norm, 'e'), HP_FIELD(rope, 'e'), HP_FIELD(ffn, 'e'),
    HP_FIELD(n_vocab, 'L'), HP_FIELD(n_embd, 'L'), HP_FIELD(n_layer, 'L'), HP_FIELD(n_head, 'L'),
    HP_FIELD(n_head_kv, 'L'), HP_FIELD(head_dim, 'L'), HP_FIELD(n_ff, 'L'), HP_FIELD(n_rot, 'L'),
    HP_FIELD(n_expert, 'L'), HP_FIELD(n_expert_used, 'L'), HP_FIELD(n_ff_exp, 'L'),
    HP_FIELD(n_swa, 'L'), HP_FIELD(swa_period, 'L'), HP_FIELD(embd_scale, 'f'), HP_FIELD(rope_base_swa, 'f'),
    HP_FIELD(rope_freq_scale_swa, 'f'), HP_FIELD(rope_base, 'f'), HP_FIELD(rope_freq_scale, 'f'), HP_FIELD(eps, 'f'),
    HP_FIELD(rope_attn_factor, 'f'), HP_FIELD(n_ctx_orig, 'L'), HP_FIELD(attn_scale, 'f'), HP_FIELD(attn_softcap, 'f'),
    HP_FIELD(final_softcap, 'f'),
};
#undef HP_FIELD

static int parse_hparams(PyObject *dict, struct tk_hparams *hp) {
    const size_t nf = sizeof HPARAM_FIELDS / sizeof *HPARAM_FIELDS;
    if ((size_t)PyDict_Size(dict) != nf) {
        PyErr_Format(PyExc_ValueError, "engine description has %zd fields, the engine takes %zu", PyDict_Size(dict), nf);
        return -1;
    }
    for (size_t i = 0; i < nf; i++) {
        PyObject *v = PyDict_GetItemString(dict, HPARAM_FIELDS[i].name);
        if (!v) {
            PyErr_Format(PyExc_ValueError, "engine description lacks %s", HPARAM_FIELDS[i].name);
            return -1;
        }
        char *field = (char *)hp + HPARAM_FIELDS[i].offset;
        if (HPARAM_FIELDS[i].kind == 'f') {
            const double x = PyFloat_AsDouble(v);
            if (x == -1.0 && PyErr_Occurred()) return -1;
            *(float *)field = (float)x;
        } else {
            const long long x = PyLong_AsLongLong(v);
            if (x == -1 && PyErr_Occurred()) return -1;
            if (HPARAM_FIELDS[i].kind == 'e') *(int *)field = (int)x;
            else *(int64_t *)field = (int64_t)x;
        }
    }
    return 0;
}

/* engine_new({field: value, ...} (struct tk_hparams by name), [(name, address, nbytes, type, rows, cols), ...])
   -> capsule */
static PyObject *py_engine_new(PyObject *self, PyObject *args) {
    struct tk_hparams hp;
    PyObject *fields, *tensors;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &fields, &PyList_Type, &tensors)) return NULL;
    if (parse_hparams(fields, &hp)) return NULL;
    const Py_ssize_t nt = PyList_GET_SIZE(tensors);
    struct tk_tensor_desc *d = PyMem_Calloc((size_t)nt + 1, sizeof *d);
    if (!d) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nt; i++) {
        unsigned long long addr, nbytes;
        long long rows, cols;
        PyObject *item = PyList_GET_ITEM(tensors, i);
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "each tensor must be a tuple (name, address, nbytes, type, rows, cols)");
            PyMem_Free(d);
            return NULL;
        }
        if (!PyArg_ParseTuple(item, "sKKiLL", &d[i].name, &addr, &nbytes, &d[i].type, &rows, &cols)) {
            PyMem_Free(d);
            return NULL;
        }
        d[i].data = (const void *)(uintptr_t)addr;
        d[i].nbytes = (size_t)nbytes;
        d[i].rows = rows;
        d[i].cols = cols;
    }
    char err[256] = "";
    struct tk_engine *e = tk_engine_new(&hp, d, (int)nt, err, sizeof err);
    PyMem_Free(d);
    if (!e) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyCapsule_New(e, "tk_engine", engine_destroy);
}

/* kv_new(engine, n_ctx, type_k, type_v) -> capsule */
static PyObject *py_kv_new(PyObject *self, PyObject *args) {
    PyObject *cap;
    long long n_ctx;
    int type_k, type_v;
    if (!PyArg_ParseTuple(args, "OLii", &cap, &n_ctx, &type_k, &type_v)) return NULL;
    struct tk_engine *e = PyCapsule_GetPointer(cap, "tk_engine");
    if (!e) return NULL;
    struct tk_kv *kv = tk_kv_new(e, n_ctx, type_k, type_v);
    if (!kv) {
        struct tk_kv *probe = n_ctx > 0 ? tk_kv_new(e, 1, type_k, type_v) : NULL;  /* the types alone are fine? */
        if (!probe) PyErr_SetString(PyExc_ValueError, "bad cache size or type");
        else PyErr_Format(PyExc_MemoryError, "a KV cache of %lld positions cannot be allocated", n_ctx);
        tk_kv_free(probe);
        return NULL;
    }
    return PyCapsule_New(kv, "tk_kv", kv_destroy);
}

/* One sequence of forward_batch, read from an object by attribute name (runtime's native.Seq): kv (capsule), tokens
   (contiguous int32), pos0, logits (contiguous float32, writable; None: no logits), all_logits, skip_logits if the
   object has it (with all_logits: the first tokens without a logits row), and embd if the object has it (contiguous float32, writable, n_embd per token: the hidden states after the output norm; None: not wanted).
   Buffers are released by release_seq. */
struct seq_bufs { Py_buffer tok, out, embd; int have_tok, have_out, have_embd; };

/* attribute `name` of o as a writable contiguous float32 buffer of at least `floats` elements, or None (*have = 0) */
static int get_out_buffer(PyObject *o, const char *name, Py_buffer *buf, int *have, size_t floats) {
    PyObject *a = PyObject_GetAttrString(o, name);
    if (!a) return -1;
    if (a == Py_None) {
        Py_DECREF(a);
        return 0;
    }
    *have = PyObject_GetBuffer(a, buf, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) == 0;
    Py_DECREF(a);
    if (!*have) return -1;
    const char *fmt = buf->format ? buf->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (buf->itemsize != 4 || strcmp(fmt, "f")) {
        PyErr_Format(PyExc_ValueError, "%s must be contiguous float32", name);
        return -1;
    }
    if ((size_t)buf->len < sizeof(float) * floats) {
        PyErr_Format(PyExc_ValueError, "%s buffer too small", name);
        return -1;
    }
    return 0;
}

static int get_attr_ll(PyObject *o, const char *name, long long *v) {
    PyObject *a = PyObject_GetAttrString(o, name);
    if (!a) return -1;
    *v = PyLong_AsLongLong(a);
    Py_DECREF(a);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

static int read_seq(PyObject *o, const struct tk_engine *e, struct tk_seq *q, struct seq_bufs *b) {
    long long pos0, all;
    PyObject *kcap = PyObject_GetAttrString(o, "kv");
    if (!kcap) return -1;
    q->kv = PyCapsule_GetPointer(kcap, "tk_kv");
    Py_DECREF(kcap);  /* the sequence object keeps the capsule alive */
    if (!q->kv || get_attr_ll(o, "pos0", &pos0) || get_attr_ll(o, "all_logits", &all)) return -1;
    PyObject *tok = PyObject_GetAttrString(o, "tokens");
    if (!tok) return -1;
    b->have_tok = PyObject_GetBuffer(tok, &b->tok, PyBUF_C_CONTIGUOUS) == 0;
    Py_DECREF(tok);
    if (!b->have_tok) return -1;
    const int64_t n = b->tok.len / 4;
    if (b->tok.len % 4 || b->tok.itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "tokens must be contiguous int32");
        return -1;
    }
    long long skip = 0;
    if (PyObject_HasAttrString(o, "skip_logits") && get_attr_ll(o, "skip_logits", &skip)) return -1;
    if (skip < 0 || skip >= (n > 0 ? n : 1) || (skip && !all)) {
        PyErr_SetString(PyExc_ValueError, "skip_logits must be below the token count, and given with all_logits");
        return -1;
    }
    if (get_out_buffer(o, "logits", &b->out, &b->have_out, (size_t)((all ? n - skip : 1) * tk_engine_vocab(e)))) return -1;
    if (PyObject_HasAttrString(o, "embd") &&
        get_out_buffer(o, "embd", &b->embd, &b->have_embd, (size_t)(n * tk_engine_embd(e))))
        return -1;
    *q = (struct tk_seq){q->kv, b->tok.buf, n, pos0, b->have_out ? b->out.buf : NULL, all != 0,
                         b->have_embd ? b->embd.buf : NULL, skip};
    return 0;
}

static void release_seq(struct seq_bufs *b) {
    if (b->have_tok) PyBuffer_Release(&b->tok);
    if (b->have_out) PyBuffer_Release(&b->out);
    if (b->have_embd) PyBuffer_Release(&b->embd);
}

/* forward_batch(engine, [seq, ...], nthreads): every sequence's tokens in one pass (engine.h) */
static PyObject *py_forward_batch(PyObject *self, PyObject *args) {
    PyObject *ecap, *list;
    int nthreads;
    if (!PyArg_ParseTuple(args, "OO!i", &ecap, &PyList_Type, &list, &nthreads)) return NULL;
    struct tk_engine *e = PyCapsule_GetPointer(ecap, "tk_engine");
    if (!e) return NULL;
    const Py_ssize_t ns = PyList_GET_SIZE(list);
    if (ns < 1 || ns > 4096) {
        PyErr_SetString(PyExc_ValueError, "forward_batch takes 1 to 4096 sequences");
        return NULL;
    }
    struct tk_seq *seqs = PyMem_Calloc((size_t)ns, sizeof *seqs);
    struct seq_bufs *bufs = PyMem_Calloc((size_t)ns, sizeof *bufs);
    PyObject *ret = NULL;
    int ok = seqs && bufs;
    if (!ok) PyErr_NoMemory();
    for (Py_ssize_t i = 0; ok && i < ns; i++) ok = read_seq(PyList_GET_ITEM(list, i), e, &seqs[i], &bufs[i]) == 0;
    if (ok) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = tk_engine_forward_batch(e, seqs, (int)ns, nthreads);
        Py_END_ALLOW_THREADS
        ret = none_or_error(rc, "bad forward arguments (tokens, positions or caches)");
    }
    for (Py_ssize_t i = 0; bufs && i < ns; i++) release_seq(&bufs[i]);
    PyMem_Free(seqs);
    PyMem_Free(bufs);
    return ret;
}

/* engine_stats(engine, [None | (sum2_f32, sum_f32, count_i64), ...]) -> capsule: llama-imatrix's statistics (engine.h's
   struct tk_act_stats) collected into the given arrays, one entry per tensor of the description, from now until
   engine_stats(engine, None); the capsule holds the arrays (the caller keeps it while collecting). The sizes are the
   caller's to check (native.engine_stats does). */
struct stats_holder { struct tk_act_stats st; Py_buffer *views; Py_ssize_t nviews; };

static void stats_destroy(PyObject *cap) {
    struct stats_holder *h = PyCapsule_GetPointer(cap, "tk_stats");
    if (!h) return;
    for (Py_ssize_t i = 0; i < h->nviews; i++) PyBuffer_Release(&h->views[i]);
    PyMem_Free(h->views);
    PyMem_Free(h->st.sum2);
    PyMem_Free(h->st.sum);
    PyMem_Free(h->st.count);
    PyMem_Free(h);
}

static PyObject *py_engine_stats(PyObject *self, PyObject *args) {
    PyObject *ecap, *list;
    if (!PyArg_ParseTuple(args, "OO", &ecap, &list)) return NULL;
    struct tk_engine *e = PyCapsule_GetPointer(ecap, "tk_engine");
    if (!e) return NULL;
    if (list == Py_None) {
        tk_engine_set_stats(e, NULL);
        Py_RETURN_NONE;
    }
    if (!PyList_Check(list) || PyList_GET_SIZE(list) > INT_MAX / 4) {
        PyErr_SetString(PyExc_TypeError, "engine_stats takes a list (one entry per tensor) or None");
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(list);
    struct stats_holder *h = PyMem_Calloc(1, sizeof *h);
    if (!h) return PyErr_NoMemory();
    h->st.n = (int)n;
    h->st.sum2 = PyMem_Calloc((size_t)n + 1, sizeof(float *));
    h->st.sum = PyMem_Calloc((size_t)n + 1, sizeof(float *));
    h->st.count = PyMem_Calloc((size_t)n + 1, sizeof(int64_t *));
    h->views = PyMem_Calloc(3 * (size_t)n + 1, sizeof(Py_buffer));
    PyObject *cap = NULL;
    if (h->st.sum2 && h->st.sum && h->st.count && h->views) cap = PyCapsule_New(h, "tk_stats", stats_destroy);
    if (!cap) {
        PyMem_Free(h->st.sum2);
        PyMem_Free(h->st.sum);
        PyMem_Free(h->st.count);
        PyMem_Free(h->views);
        PyMem_Free(h);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (item == Py_None) continue;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "each entry: None or (sum2, sum, count)");
            Py_DECREF(cap);
            return NULL;
        }
        for (int k = 0; k < 3; k++) {
            Py_buffer *v = &h->views[h->nviews];
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, k), v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)) {
                Py_DECREF(cap);
                return NULL;
            }
            h->nviews++;
            if (v->itemsize != (k == 2 ? 8 : 4)) {
                PyErr_SetString(PyExc_ValueError, "sum2 and sum must be float32, count int64");
                Py_DECREF(cap);
                return NULL;
            }
        }
        h->st.sum2[i] = h->views[h->nviews - 3].buf;
        h->st.sum[i] = h->views[h->nviews - 2].buf;
        h->st.count[i] = h->views[h->nviews - 1].buf;
    }
    tk_engine_set_stats(e, &h->st);
    return cap;
}

/* read_bytes(buffer, nthreads) -> checksum: the benchmarks' memory-bandwidth probe */
static PyObject *py_read_bytes(PyObject *self, PyObject *args) {
    Py_buffer b;
    int nthreads;
    if (!PyArg_ParseTuple(args, "y*i", &b, &nthreads)) return NULL;
    uint64_t s;
    Py_BEGIN_ALLOW_THREADS
    s = tk_read_bytes(b.buf, (size_t)b.len & ~(size_t)63, nthreads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(s);
}

static PyMethodDef methods[] = {
    {"convert", py_convert, METH_VARARGS,
     "convert(src, src_type, dst, dst_type, nthreads=1): convert elements between F32, F16 and BF16 (ggml type ids)."},
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(type, src, src_type, dst, nrows, n_per_row, nthreads=1, imatrix=None): quantize F32/F16/BF16 rows "
     "with ggml's reference algorithm (given importance weights, ggml's imatrix one); returns the number of "
     "NaN/Inf values found (nothing is trusted in dst then)."},
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(type, src, dst_f32, nrows, n_per_row, nthreads=1): dequantize rows to f32."},
    {"type_traits", py_type_traits, METH_NOARGS, "{ggml type id: (name, block size, bytes per block)}"},
    {"count_nonfinite", py_count_nonfinite, METH_VARARGS, "count_nonfinite(data, type): NaN/Inf elements."},
    {"activations", py_activations, METH_VARARGS,
     "activations(wtype, x_f32, n, cols) -> (vec_dot_type, bytes): activations as the matmul converts them."},
    {"cpu_features", py_cpu_features, METH_NOARGS, "SIMD features detected on this CPU."},
    {"set_force_scalar", py_set_force_scalar, METH_O, "Force the portable scalar code paths."},
    {"set_gelu_fp16", py_set_gelu_fp16, METH_O, "GELU through ggml's fp16 table (True) or exact (False)."},
    {"set_isa_limit", py_set_isa_limit, METH_O, "Cap the SIMD kernels: 1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI."},
    {"set_l2_bytes", py_set_l2_bytes, METH_O,
     "The L2 size (bytes) the matmul driver blocks its tokens for; 0: the CPU's (tests: several passes)."},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(wtype, w, rows, cols, x_f32, n, y_f32, nthreads=1): y[n][rows] = x[n][cols] . W[rows][cols]^T, W stored "
     "as wtype, activations converted to its vec_dot_type as ggml does."},
    {"read_bytes", py_read_bytes, METH_VARARGS, "read_bytes(buffer, nthreads): read it all (bandwidth probe)."},
    {"engine_new", py_engine_new, METH_VARARGS,
     "engine_new(kinds, sizes, floats, tensors) -> engine: the forward pass over memory-mapped GGUF tensors given as "
     "(name, address, nbytes, type, rows, cols); the caller keeps that memory alive."},
    {"kv_new", py_kv_new, METH_VARARGS,
     "kv_new(engine, n_ctx, type_k, type_v) -> KV cache (F32, F16, Q8_0 or Q4_0 keys and values)."},
    {"engine_stats", py_engine_stats, METH_VARARGS,
     "engine_stats(engine, [None | (sum2, sum, count), ...] | None) -> holder: collect llama-imatrix's activation "
     "statistics into the arrays (None: stop)."},
    {"forward_batch", py_forward_batch, METH_VARARGS,
     "forward_batch(engine, [seq, ...], nthreads): sequences (attributes kv, tokens_i32, pos0, logits_f32 or None, "
     "all_logits, optional embd_f32 or None) evaluated in one pass, each against its own cache."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", "toolkit native core", -1, methods};

PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&module); }
