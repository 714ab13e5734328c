/*
 * imaguard._native: the happy path of a tree verify, in C, without the GIL.
 *
 * One object, QuickVerifier, answers for each path "this file certainly passes" (1),
 * "ask the full path" (0) or "its (algorithm, key id) pair is not registered yet" (2).
 * It does what the pure-Python predicate in imaguard/appraise/_quick.py does and nothing
 * more: open, fstat, fgetxattr of one attribute, a v2 signature header
 * (EVM_IMA_XATTR_DIGSIG, the kernel's struct signature_v2_hdr: type, version, hash
 * algorithm, 4-byte key id, 2-byte big-endian signature size), the content hash, the file
 * unchanged while read, and the signature check through OpenSSL's EVP_PKEY_verify with the
 * key and digest the Python side registered for that pair. Which pairs may be trusted
 * (the keyring lookup, revocation, allowed algorithms, blacklists) is decided in Python by
 * add(); this code only looks the pair up. Any doubt answers 0, and the caller then asks
 * imaguard.appraise for the verdict: this module never decides a failure.
 *
 * run() releases the GIL for the whole batch, so two threads verify on two cores in one
 * process. The table of pairs is guarded by a mutex; entries are never freed before the
 * object is, so a pointer taken under the mutex stays valid for the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define SMALL (1 << 16)          /* read in one read(), as _quick.SMALL */
#define LARGE_BUF (1 << 20)      /* the buffer for larger files */
#define XATTR_MAX 4096           /* larger values are left to the full path */
#define HEADER 9                 /* struct signature_v2_hdr */
#define V2_SIGNATURE 3           /* EVM_IMA_XATTR_DIGSIG */

enum { ASK = 0, PASS = 1, UNKNOWN_PAIR = 2 };

typedef struct {
    unsigned algo;
    uint32_t key_id;
    EVP_MD *md;      /* NULL: this pair has no quick path */
    EVP_PKEY *pkey;
    int is_rsa;
    size_t index;
} Entry;

typedef struct {
    PyObject_HEAD
    char *attribute;
    Entry **entries;
    size_t count;
    size_t capacity;
    pthread_mutex_t lock;
} QuickVerifier;

/* What one run() call owns: its buffers, digest context and one EVP_PKEY_CTX per entry
 * (an EVP_PKEY_CTX is not shared between threads). */
typedef struct {
    unsigned char *buf;
    EVP_MD_CTX *mctx;
    EVP_PKEY_CTX **ctxs;
    size_t nctx;
} Local;

static Entry *lookup(QuickVerifier *self, unsigned algo, uint32_t key_id, int *found)
{
    Entry *e = NULL;
    *found = 0;
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->count; i++) {
        if (self->entries[i]->algo == algo && self->entries[i]->key_id == key_id) {
            e = self->entries[i];
            *found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&self->lock);
    return e;
}

static EVP_PKEY_CTX *ctx_for(Local *loc, Entry *e)
{
    if (e->index >= loc->nctx) {
        size_t n = e->index + 8;
        EVP_PKEY_CTX **grown = realloc(loc->ctxs, n * sizeof *grown);
        if (grown == NULL)
            return NULL;
        memset(grown + loc->nctx, 0, (n - loc->nctx) * sizeof *grown);
        loc->ctxs = grown;
        loc->nctx = n;
    }
    EVP_PKEY_CTX *ctx = loc->ctxs[e->index];
    if (ctx != NULL)
        return ctx;
    ctx = EVP_PKEY_CTX_new(e->pkey, NULL);
    if (ctx == NULL)
        return NULL;
    if (EVP_PKEY_verify_init(ctx) != 1
        || (e->is_rsa && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1)
        || EVP_PKEY_CTX_set_signature_md(ctx, e->md) != 1) {
        EVP_PKEY_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    loc->ctxs[e->index] = ctx;
    return ctx;
}

static int same_timespec(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* The file's content digest into out; 1 when read whole and unchanged, else 0. */
static int digest_fd(int fd, const struct stat *before, Entry *e, Local *loc,
                     unsigned char *out, unsigned int *outlen)
{
    off_t size = before->st_size;
    off_t offset = 0;
    if (EVP_DigestInit_ex(loc->mctx, e->md, NULL) != 1)
        return 0;
    if (size <= SMALL) {
        ssize_t n = read(fd, loc->buf, (size_t)size + 1);
        if (n != (ssize_t)size)
            return 0;
        if (EVP_DigestUpdate(loc->mctx, loc->buf, (size_t)n) != 1)
            return 0;
        offset = n;
    } else {
        for (;;) {
            ssize_t n = pread(fd, loc->buf, LARGE_BUF, offset);
            if (n < 0)
                return 0;
            if (n == 0)
                break;
            if (EVP_DigestUpdate(loc->mctx, loc->buf, (size_t)n) != 1)
                return 0;
            offset += n;
            if (offset >= size && n < LARGE_BUF)
                break;
        }
    }
    struct stat after;
    if (fstat(fd, &after) != 0)
        return 0;
    if (after.st_dev != before->st_dev || after.st_ino != before->st_ino
        || after.st_size != size || offset != after.st_size
        || !same_timespec(&after.st_mtim, &before->st_mtim)
        || !same_timespec(&after.st_ctim, &before->st_ctim))
        return 0;
    return EVP_DigestFinal_ex(loc->mctx, out, outlen) == 1;
}

static int check_one(QuickVerifier *self, const char *path, Local *loc)
{
    unsigned char value[XATTR_MAX];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    struct stat before;
    ssize_t n;
    uint32_t key_id;
    Entry *e;
    EVP_PKEY_CTX *ctx;
    int found;
    int result = ASK;

    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return ASK;
    if (fstat(fd, &before) != 0 || !S_ISREG(before.st_mode))
        goto out;
    n = fgetxattr(fd, self->attribute, value, sizeof value);
    if (n <= HEADER || value[0] != V2_SIGNATURE || value[1] != 2)
        goto out;
    if ((((size_t)value[7] << 8) | value[8]) != (size_t)n - HEADER)
        goto out;
    key_id = ((uint32_t)value[3] << 24) | ((uint32_t)value[4] << 16)
             | ((uint32_t)value[5] << 8) | value[6];
    e = lookup(self, value[2], key_id, &found);
    if (!found) {
        result = UNKNOWN_PAIR;
        goto out;
    }
    if (e->md == NULL || !digest_fd(fd, &before, e, loc, digest, &dlen))
        goto out;
    close(fd);
    fd = -1;
    ctx = ctx_for(loc, e);
    if (ctx != NULL
        && EVP_PKEY_verify(ctx, value + HEADER, (size_t)n - HEADER, digest, dlen) == 1)
        return PASS;
out:
    if (fd >= 0)
        close(fd);
    ERR_clear_error();
    return result;
}

static PyObject *QuickVerifier_run(QuickVerifier *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "run() takes a list of paths");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **encoded = PyMem_Calloc((size_t)(count ? count : 1), sizeof *encoded);
    PyObject *flags = PyBytes_FromStringAndSize(NULL, count);
    Local loc = {0};
    char *out;
    if (encoded == NULL || flags == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded[i]))
            goto fail;
        if (strlen(PyBytes_AS_STRING(encoded[i])) != (size_t)PyBytes_GET_SIZE(encoded[i])) {
            PyErr_SetString(PyExc_ValueError, "run(): a path contains a NUL byte");
            goto fail;
        }
    }
    loc.buf = malloc(LARGE_BUF > SMALL + 1 ? LARGE_BUF : SMALL + 1);
    loc.mctx = EVP_MD_CTX_new();
    if (loc.buf == NULL || loc.mctx == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    out = PyBytes_AS_STRING(flags);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        out[i] = (char)check_one(self, PyBytes_AS_STRING(encoded[i]), &loc);
    Py_END_ALLOW_THREADS
    goto done;
fail:
    Py_CLEAR(flags);
done:
    if (encoded != NULL) {
        for (Py_ssize_t i = 0; i < count; i++)
            Py_XDECREF(encoded[i]);
        PyMem_Free(encoded);
    }
    for (size_t i = 0; i < loc.nctx; i++)
        EVP_PKEY_CTX_free(loc.ctxs[i]);
    free(loc.ctxs);
    EVP_MD_CTX_free(loc.mctx);
    free(loc.buf);
    Py_DECREF(seq);
    return flags;
}

/* add(algo_id, key_id, md_name, spki_der, digest_size) -> bool
 * Registers a pair. md_name None registers "no quick path". Returns whether the pair
 * has a quick path (False also when OpenSSL cannot load the key or the digest). */
static PyObject *QuickVerifier_add(QuickVerifier *self, PyObject *args)
{
    unsigned int algo;
    unsigned long key_id;
    const char *md_name = NULL;
    const unsigned char *der = NULL;
    Py_ssize_t der_len = 0;
    int digest_size = 0;
    if (!PyArg_ParseTuple(args, "Ikz|z#i:add", &algo, &key_id, &md_name, &der, &der_len,
                          &digest_size))
        return NULL;
    if (algo > 255 || key_id > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "add(): algorithm id or key id out of range");
        return NULL;
    }
    Entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return PyErr_NoMemory();
    e->algo = algo;
    e->key_id = (uint32_t)key_id;
    if (md_name != NULL && der != NULL) {
        const unsigned char *p = der;
        e->pkey = d2i_PUBKEY(NULL, &p, (long)der_len);
        e->md = EVP_MD_fetch(NULL, md_name, NULL);
        int id = e->pkey ? EVP_PKEY_get_base_id(e->pkey) : 0;
        e->is_rsa = id == EVP_PKEY_RSA;
        if (e->pkey == NULL || e->md == NULL || p != der + der_len
            || (id != EVP_PKEY_RSA && id != EVP_PKEY_EC)
            || EVP_MD_get_size(e->md) != digest_size) {
            EVP_MD_free(e->md);
            EVP_PKEY_free(e->pkey);
            e->md = NULL;
            e->pkey = NULL;
        }
        ERR_clear_error();
    }
    int quick = e->md != NULL;
    pthread_mutex_lock(&self->lock);
    int found = 0;
    for (size_t i = 0; i < self->count; i++)
        if (self->entries[i]->algo == algo && self->entries[i]->key_id == (uint32_t)key_id)
            found = 1;
    if (!found && self->count == self->capacity) {
        size_t n = self->capacity ? self->capacity * 2 : 8;
        Entry **grown = realloc(self->entries, n * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&self->lock);
            EVP_MD_free(e->md);
            EVP_PKEY_free(e->pkey);
            free(e);
            return PyErr_NoMemory();
        }
        self->entries = grown;
        self->capacity = n;
    }
    if (!found) {
        e->index = self->count;
        self->entries[self->count++] = e;
    }
    pthread_mutex_unlock(&self->lock);
    if (found) { /* the first registration stands (two threads may race to add) */
        EVP_MD_free(e->md);
        EVP_PKEY_free(e->pkey);
        free(e);
        int dummy;
        Entry *old = lookup(self, algo, (uint32_t)key_id, &dummy);
        quick = old->md != NULL;
    }
    return PyBool_FromLong(quick);
}

static int QuickVerifier_init(QuickVerifier *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"attribute", NULL};
    const char *attribute;
    Py_ssize_t len;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#:QuickVerifier", kwlist, &attribute, &len))
        return -1;
    if (self->attribute != NULL) {
        PyErr_SetString(PyExc_TypeError, "QuickVerifier is already initialised");
        return -1;
    }
    if (len == 0 || strlen(attribute) != (size_t)len) {
        PyErr_SetString(PyExc_ValueError, "QuickVerifier: bad attribute name");
        return -1;
    }
    self->attribute = strdup(attribute);
    if (self->attribute == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *QuickVerifier_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    QuickVerifier *self = (QuickVerifier *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (pthread_mutex_init(&self->lock, NULL) != 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void QuickVerifier_dealloc(QuickVerifier *self)
{
    for (size_t i = 0; i < self->count; i++) {
        EVP_MD_free(self->entries[i]->md);
        EVP_PKEY_free(self->entries[i]->pkey);
        free(self->entries[i]);
    }
    free(self->entries);
    free(self->attribute);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


static PyMethodDef QuickVerifier_methods[] = {
    {"run", (PyCFunction)QuickVerifier_run, METH_O,
     "run(paths) -> bytes: per path 1 (certainly passes), 0 (ask the full path), "
     "2 (its algorithm and key id are not registered)."},
    {"add", (PyCFunction)QuickVerifier_add, METH_VARARGS,
     "add(algo_id, key_id, md_name, spki_der, digest_size) -> bool: register a pair; "
     "md_name None registers a pair with no quick path."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject QuickVerifierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "imaguard._native.QuickVerifier",
    .tp_basicsize = sizeof(QuickVerifier),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The happy path of a tree verify (see imaguard/appraise/_quick.py).",
    .tp_new = QuickVerifier_new,
    .tp_init = (initproc)QuickVerifier_init,
    .tp_dealloc = (destructor)QuickVerifier_dealloc,
    .tp_methods = QuickVerifier_methods,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "imaguard._native",
    .m_doc = "C paths for imaguard's hot loops (optional: pure Python is used without it).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&QuickVerifierType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&QuickVerifierType);
    if (PyModule_AddObject(m, "QuickVerifier", (PyObject *)&QuickVerifierType) < 0) {
        Py_DECREF(&QuickVerifierType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SMALL", SMALL) < 0
        || PyModule_AddStringConstant(m, "OPENSSL_VERSION", OPENSSL_VERSION_TEXT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
