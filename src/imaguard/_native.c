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


/* ---------------------------------------------------------------------------------------
 * The measurement log's common ASCII record, "PCR TEMPLATE-DIGEST ima-ng ALGO:HEX NAME"
 * (the kernel's ima_ascii_measurements_show, security/integrity/ima/ima_fs.c), as
 * imaguard/measure/_parallel.py's scan_ascii and _judge_ascii read it: these functions
 * take only lines that code's own fast path takes, and stop at (scan) or hand back
 * (judge) every other line for the format module's reader.
 * ------------------------------------------------------------------------------------- */

#define MAX_PCR 24
#define MAX_BANKS 8

typedef struct {
    const unsigned char *f[5];
    size_t n[5];
} Parts;

/* Exactly five fields separated by single spaces (bytes.split(b" ") giving 5 parts). */
static int split5(const unsigned char *p, size_t len, Parts *out)
{
    size_t k = 0, begin = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == ' ') {
            if (k == 4)
                return 0;
            out->f[k] = p + begin;
            out->n[k] = i - begin;
            k++;
            begin = i + 1;
        }
    }
    if (k != 4)
        return 0;
    out->f[4] = p + begin;
    out->n[4] = len - begin;
    return 1;
}

/* The PCR column as str(i) for i < MAX_PCR writes it (no sign, no leading zero). */
static int pcr_text(const unsigned char *p, size_t n)
{
    if (n == 1 && p[0] >= '0' && p[0] <= '9')
        return p[0] - '0';
    if (n == 2 && p[0] >= '1' && p[0] <= '9' && p[1] >= '0' && p[1] <= '9') {
        int v = (p[0] - '0') * 10 + (p[1] - '0');
        return v < MAX_PCR ? v : -1;
    }
    return -1;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* binascii.unhexlify: even length, hex digits of either case. */
static int unhex(const unsigned char *p, size_t n, unsigned char *out)
{
    if (n % 2)
        return 0;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval(p[i]), lo = hexval(p[i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

static int all_ascii(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return 0;
    return 1;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

typedef struct {
    unsigned char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra)
        cap *= 2;
    unsigned char *q = realloc(b->p, cap);
    if (q == NULL)
        return 0;
    b->p = q;
    b->cap = cap;
    return 1;
}

static int buf_add(Buf *b, const void *data, size_t n)
{
    if (!buf_reserve(b, n))
        return 0;
    memcpy(b->p + b->n, data, n);
    b->n += n;
    return 1;
}

static EVP_MD *fetch_md(PyObject *name)
{
    const char *s = PyUnicode_AsUTF8(name);
    if (s == NULL)
        return NULL;
    EVP_MD *md = EVP_MD_fetch(NULL, s, NULL);
    if (md == NULL) {
        ERR_clear_error();
        PyErr_Format(PyExc_ValueError, "unknown digest %R", name);
    }
    return md;
}

/* scan_ima_ng(text, start, end, digest_bank, banks)
 *   -> (stop, count, pcrs, values, failures, violations)
 * From byte start (a line's start) to end, take lines while each is an empty line or a
 * common ima-ng record; stop at the first other line (stop = its offset; end when none).
 * values: per bank, the digests each record extends that bank with, concatenated (0xff..
 * for a violation, a record whose stored digest is all zeros); failures: the indexes
 * whose stored digest is not the digest_bank hash of the template data. */
static PyObject *scan_ima_ng(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer text;
    Py_ssize_t start, end;
    PyObject *digest_name, *bank_names;
    if (!PyArg_ParseTuple(args, "y*nnUO!:scan_ima_ng", &text, &start, &end, &digest_name,
                          &PyTuple_Type, &bank_names))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nbanks = PyTuple_GET_SIZE(bank_names);
    EVP_MD *mds[MAX_BANKS] = {0};
    EVP_MD *check_md = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    Buf values[MAX_BANKS] = {{0}};
    Buf pcrs = {0}, td = {0}, fails = {0}, viols = {0};
    unsigned char stored[EVP_MAX_MD_SIZE], check[EVP_MAX_MD_SIZE], h[EVP_MAX_MD_SIZE];
    unsigned char zero[EVP_MAX_MD_SIZE] = {0};
    unsigned char ff[EVP_MAX_MD_SIZE];
    memset(ff, 0xff, sizeof ff);
    Py_ssize_t check_bank = -1;
    size_t size = 0;

    if (ctx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (start < 0 || end > text.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "scan_ima_ng: range out of bounds");
        goto done;
    }
    if (nbanks < 1 || nbanks > MAX_BANKS) {
        PyErr_SetString(PyExc_ValueError, "scan_ima_ng: 1 to 8 banks");
        goto done;
    }
    for (Py_ssize_t b = 0; b < nbanks; b++) {
        PyObject *name = PyTuple_GET_ITEM(bank_names, b);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "scan_ima_ng: bank names are str");
            goto done;
        }
        if ((mds[b] = fetch_md(name)) == NULL)
            goto done;
        if (check_bank < 0 && PyUnicode_Compare(name, digest_name) == 0)
            check_bank = b;
    }
    if (check_bank < 0 && (check_md = fetch_md(digest_name)) == NULL)
        goto done;
    size = (size_t)EVP_MD_get_size(check_bank >= 0 ? mds[check_bank] : check_md);
    const unsigned char *base = text.buf;
    Py_ssize_t pos = start;
    Py_ssize_t index = 0;
    while (pos < end) {
        const unsigned char *line = base + pos;
        const unsigned char *nl = memchr(line, '\n', (size_t)(end - pos));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(end - pos);
        Py_ssize_t next = pos + (Py_ssize_t)len + (nl ? 1 : 0);
        if (len == 0) {
            pos = next;
            continue;
        }
        Parts f;
        if (!split5(line, len, &f) || f.n[2] != 6 || memcmp(f.f[2], "ima-ng", 6) != 0
            || f.n[1] != 2 * size)
            break;
        int pcr = pcr_text(f.f[0], f.n[0]);
        const unsigned char *colon = memchr(f.f[3], ':', f.n[3]);
        if (pcr < 0 || colon == NULL || !all_ascii(f.f[3], f.n[3]))
            break;
        size_t algo_len = (size_t)(colon - f.f[3]) + 1; /* with the colon */
        size_t hex_len = f.n[3] - algo_len;
        if (!unhex(f.f[1], f.n[1], stored))
            break;
        td.n = 0;
        if (!buf_reserve(&td, 8 + algo_len + 1 + hex_len / 2 + f.n[4] + 1)) {
            PyErr_NoMemory();
            goto done;
        }
        unsigned char *q = td.p;
        put_le32(q, (uint32_t)(algo_len + 1 + hex_len / 2));
        q += 4;
        memcpy(q, f.f[3], algo_len);
        q += algo_len;
        *q++ = 0;
        if (!unhex(colon + 1, hex_len, q))
            break;
        q += hex_len / 2;
        put_le32(q, (uint32_t)(f.n[4] + 1));
        q += 4;
        memcpy(q, f.f[4], f.n[4]);
        q += f.n[4];
        *q++ = 0;
        td.n = (size_t)(q - td.p);

        unsigned char p8 = (unsigned char)pcr;
        int viol = memcmp(stored, zero, size) == 0;
        if (!buf_add(&pcrs, &p8, 1))
            goto nomem;
        for (Py_ssize_t b = 0; b < nbanks; b++) {
            size_t hs = (size_t)EVP_MD_get_size(mds[b]);
            if (viol) {
                if (!buf_add(&values[b], ff, hs))
                    goto nomem;
                continue;
            }
            unsigned int hl;
            if (EVP_DigestInit_ex(ctx, mds[b], NULL) != 1
                || EVP_DigestUpdate(ctx, td.p, td.n) != 1
                || EVP_DigestFinal_ex(ctx, h, &hl) != 1) {
                PyErr_SetString(PyExc_RuntimeError, "scan_ima_ng: digest failed");
                goto done;
            }
            if (!buf_add(&values[b], h, hl))
                goto nomem;
            if (b == check_bank)
                memcpy(check, h, hl);
        }
        if (viol) {
            if (!buf_add(&viols, &index, sizeof index))
                goto nomem;
        } else {
            if (check_bank < 0) {
                unsigned int hl;
                if (EVP_DigestInit_ex(ctx, check_md, NULL) != 1
                    || EVP_DigestUpdate(ctx, td.p, td.n) != 1
                    || EVP_DigestFinal_ex(ctx, check, &hl) != 1) {
                    PyErr_SetString(PyExc_RuntimeError, "scan_ima_ng: digest failed");
                    goto done;
                }
            }
            if (memcmp(check, stored, size) != 0 && !buf_add(&fails, &index, sizeof index))
                goto nomem;
        }
        index++;
        pos = next;
    }
    {
        PyObject *vals = PyTuple_New(nbanks);
        PyObject *fl = PyList_New((Py_ssize_t)(fails.n / sizeof(Py_ssize_t)));
        PyObject *vl = PyList_New((Py_ssize_t)(viols.n / sizeof(Py_ssize_t)));
        PyObject *pc = PyBytes_FromStringAndSize((const char *)pcrs.p, (Py_ssize_t)pcrs.n);
        if (vals == NULL || fl == NULL || vl == NULL || pc == NULL) {
            Py_XDECREF(vals);
            Py_XDECREF(fl);
            Py_XDECREF(vl);
            Py_XDECREF(pc);
            goto done;
        }
        int bad = 0;
        for (Py_ssize_t b = 0; b < nbanks; b++) {
            PyObject *v = PyBytes_FromStringAndSize((const char *)values[b].p,
                                                    (Py_ssize_t)values[b].n);
            if (v == NULL)
                bad = 1;
            else
                PyTuple_SET_ITEM(vals, b, v);
        }
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(fl); i++) {
            PyObject *x = PyLong_FromSsize_t(((Py_ssize_t *)fails.p)[i]);
            if (x == NULL)
                bad = 1;
            else
                PyList_SET_ITEM(fl, i, x);
        }
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(vl); i++) {
            PyObject *x = PyLong_FromSsize_t(((Py_ssize_t *)viols.p)[i]);
            if (x == NULL)
                bad = 1;
            else
                PyList_SET_ITEM(vl, i, x);
        }
        if (bad) {
            Py_DECREF(vals);
            Py_DECREF(fl);
            Py_DECREF(vl);
            Py_DECREF(pc);
            goto done;
        }
        result = Py_BuildValue("nnNNNN", pos, index, pc, vals, fl, vl);
    }
    goto done;
nomem:
    PyErr_NoMemory();
done:
    for (Py_ssize_t b = 0; b < MAX_BANKS; b++) {
        EVP_MD_free(mds[b]);
        free(values[b].p);
    }
    EVP_MD_free(check_md);
    EVP_MD_CTX_free(ctx);
    free(pcrs.p);
    free(td.p);
    free(fails.p);
    free(viols.p);
    PyBuffer_Release(&text);
    return result;
}

/* chain(bank, pcrs, values, watch) -> (regs, hits), as _parallel.chain. */
static PyObject *chain(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *bank, *watch;
    Py_buffer pcrs, values;
    if (!PyArg_ParseTuple(args, "Uy*y*O!:chain", &bank, &pcrs, &values, &PyDict_Type, &watch))
        return NULL;
    PyObject *result = NULL, *regs_list = NULL, *hits = NULL;
    Buf hitbuf[MAX_PCR] = {{0}};
    unsigned char regs[MAX_PCR][EVP_MAX_MD_SIZE];
    unsigned char want[MAX_PCR][EVP_MAX_MD_SIZE];
    int watched[MAX_PCR] = {0};
    unsigned char in[2 * EVP_MAX_MD_SIZE];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_MD *md = fetch_md(bank);
    if (md == NULL || ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    size_t size = (size_t)EVP_MD_get_size(md);
    Py_ssize_t n = pcrs.len;
    if ((size_t)values.len < (size_t)n * size) {
        PyErr_SetString(PyExc_ValueError, "chain: fewer values than records");
        goto done;
    }
    memset(regs, 0, sizeof regs);
    PyObject *key, *val;
    Py_ssize_t it = 0;
    while (PyDict_Next(watch, &it, &key, &val)) {
        long p = PyLong_AsLong(key);
        if (p == -1 && PyErr_Occurred())
            goto done;
        if (p < 0 || p >= MAX_PCR || !PyBytes_Check(val)) {
            PyErr_SetString(PyExc_ValueError, "chain: watch maps a PCR to its bytes");
            goto done;
        }
        watched[p] = PyBytes_GET_SIZE(val) == (Py_ssize_t)size ? 1 : 2; /* 2: never equal */
        if (watched[p] == 1)
            memcpy(want[p], PyBytes_AS_STRING(val), size);
    }
    const unsigned char *pc = pcrs.buf;
    const unsigned char *vs = values.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned p = pc[i];
        if (p >= MAX_PCR) {
            PyErr_Format(PyExc_IndexError, "chain: PCR %u out of range", p);
            goto done;
        }
        unsigned int hl;
        memcpy(in, regs[p], size);
        memcpy(in + size, vs + (size_t)i * size, size);
        if (EVP_DigestInit_ex(ctx, md, NULL) != 1 || EVP_DigestUpdate(ctx, in, 2 * size) != 1
            || EVP_DigestFinal_ex(ctx, regs[p], &hl) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "chain: digest failed");
            goto done;
        }
        if (watched[p] == 1 && memcmp(regs[p], want[p], size) == 0) {
            Py_ssize_t count = i + 1;
            if (!buf_add(&hitbuf[p], &count, sizeof count)) {
                PyErr_NoMemory();
                goto done;
            }
        }
    }
    regs_list = PyList_New(MAX_PCR);
    hits = PyDict_New();
    if (regs_list == NULL || hits == NULL)
        goto done;
    for (int p = 0; p < MAX_PCR; p++) {
        PyObject *r = PyBytes_FromStringAndSize((const char *)regs[p], (Py_ssize_t)size);
        if (r == NULL)
            goto done;
        PyList_SET_ITEM(regs_list, p, r);
    }
    it = 0;
    while (PyDict_Next(watch, &it, &key, &val)) {
        long p = PyLong_AsLong(key);
        Py_ssize_t k = (Py_ssize_t)(hitbuf[p].n / sizeof(Py_ssize_t));
        PyObject *lst = PyList_New(k);
        if (lst == NULL)
            goto done;
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *x = PyLong_FromSsize_t(((Py_ssize_t *)hitbuf[p].p)[j]);
            if (x == NULL) {
                Py_DECREF(lst);
                goto done;
            }
            PyList_SET_ITEM(lst, j, x);
        }
        int rc = PyDict_SetItem(hits, key, lst);
        Py_DECREF(lst);
        if (rc < 0)
            goto done;
    }
    result = PyTuple_Pack(2, regs_list, hits);
done:
    Py_XDECREF(regs_list);
    Py_XDECREF(hits);
    for (int p = 0; p < MAX_PCR; p++)
        free(hitbuf[p].p);
    EVP_MD_free(md);
    EVP_MD_CTX_free(ctx);
    PyBuffer_Release(&pcrs);
    PyBuffer_Release(&values);
    return result;
}

/* judge_ima_ng(text, hexsize, digests) -> list of (offset, line number, index)
 * The lines _judge_ascii must read with the format module's reader: all but the ima-ng
 * lines its fast path passes (a violation, or a name the policy's digests map allows
 * with this lowercase digest). The first record is always handed back. */
static PyObject *judge_ima_ng(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer text;
    Py_ssize_t hexsize;
    PyObject *digests;
    if (!PyArg_ParseTuple(args, "y*nO!:judge_ima_ng", &text, &hexsize, &PyDict_Type, &digests))
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&text);
        return NULL;
    }
    const unsigned char *base = text.buf;
    Py_ssize_t end = text.len, pos = 0, number = 0, index = 0;
    while (pos < end) {
        const unsigned char *line = base + pos;
        const unsigned char *nl = memchr(line, '\n', (size_t)(end - pos));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(end - pos);
        Py_ssize_t here = pos;
        pos += (Py_ssize_t)len + (nl ? 1 : 0);
        number++;
        if (len == 0)
            continue;
        int fast = 0;
        Parts f;
        if (index > 0 && split5(line, len, &f) && f.n[2] == 6
            && memcmp(f.f[2], "ima-ng", 6) == 0 && f.n[1] == (size_t)hexsize
            && pcr_text(f.f[0], f.n[0]) >= 0) {
            int zeros = 1;
            for (size_t i = 0; i < f.n[1]; i++)
                if (f.f[1][i] != '0') {
                    zeros = 0;
                    break;
                }
            if (zeros) {
                fast = 1; /* a violation: not judged */
            } else {
                const unsigned char *colon = memchr(f.f[3], ':', f.n[3]);
                const unsigned char *hx = colon ? colon + 1 : f.f[3];
                size_t hn = (size_t)(f.f[3] + f.n[3] - hx);
                int lower = 0, ok = 1;
                for (size_t i = 0; i < hn; i++) {
                    unsigned char c = hx[i];
                    if (c >= 'a' && c <= 'z')
                        lower = 1;
                    else if ((c >= 'A' && c <= 'Z') || c >= 0x80)
                        ok = 0; /* str.islower() is False, or not decided here */
                }
                if (ok && lower) {
                    PyObject *path = PyUnicode_DecodeUTF8((const char *)f.f[4],
                                                          (Py_ssize_t)f.n[4], "surrogateescape");
                    if (path == NULL)
                        goto fail;
                    PyObject *allowed = PyDict_GetItemWithError(digests, path);
                    Py_DECREF(path);
                    if (allowed == NULL && PyErr_Occurred())
                        goto fail;
                    if (allowed != NULL) {
                        /* Held while compared: a comparison may run code that edits the map. */
                        Py_INCREF(allowed);
                        PyObject *hexd = PyUnicode_DecodeASCII((const char *)hx, (Py_ssize_t)hn,
                                                               NULL);
                        if (hexd == NULL) {
                            Py_DECREF(allowed);
                            goto fail;
                        }
                        int in = PySequence_Contains(allowed, hexd);
                        Py_DECREF(hexd);
                        Py_DECREF(allowed);
                        if (in < 0)
                            goto fail;
                        fast = in;
                    }
                }
            }
        }
        if (!fast) {
            PyObject *t = Py_BuildValue("nnn", here, number, index);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                goto fail;
            }
            Py_DECREF(t);
        }
        index++;
    }
    PyBuffer_Release(&text);
    return out;
fail:
    Py_DECREF(out);
    PyBuffer_Release(&text);
    return NULL;
}

static PyMethodDef native_functions[] = {
    {"scan_ima_ng", scan_ima_ng, METH_VARARGS,
     "scan_ima_ng(text, start, end, digest_bank, banks) -> "
     "(stop, count, pcrs, values, failures, violations)"},
    {"chain", chain, METH_VARARGS, "chain(bank, pcrs, values, watch) -> (regs, hits)"},
    {"judge_ima_ng", judge_ima_ng, METH_VARARGS,
     "judge_ima_ng(text, hexsize, digests) -> [(offset, line number, index), ...]"},
    {NULL, NULL, 0, NULL},
};

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
    .m_methods = native_functions,
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
