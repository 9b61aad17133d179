/* The Python binding of the native core: thin argument parsing around core.h, GIL released during work. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "core.h"

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

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    return Py_BuildValue("{s:O}", "f16c_avx2", tk_cpu_has_f16c() ? Py_True : Py_False);
}

static PyObject *py_set_force_scalar(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    tk_set_force_scalar(on);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"convert", py_convert, METH_VARARGS,
     "convert(src, src_type, dst, dst_type, nthreads=1): convert elements between F32, F16 and BF16 (ggml type ids)."},
    {"cpu_features", py_cpu_features, METH_NOARGS, "SIMD features detected on this CPU."},
    {"set_force_scalar", py_set_force_scalar, METH_O, "Force the portable scalar code paths."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", "toolkit native core", -1, methods};

PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&module); }
