/* Reads the four MNIST IDX files (gzipped or raw, through zlib's gzopen) from a directory:
 * pixels scaled to [0, 1] as byte / 255, labels as bytes. Header-only; used by fa_online.c. */
#ifndef MNIST_IDX_H
#define MNIST_IDX_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef struct {
    int n, dim;      /* samples, pixels per sample */
    float *x;        /* n * dim, in [0, 1] */
    unsigned char *y; /* n labels */
} mnist_split;

static gzFile idx_open(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.gz", dir, name);
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = gzopen(path, "rb");
    }
    if (!f) {
        fprintf(stderr, "cannot open %s/%s[.gz]\n", dir, name);
        exit(2);
    }
    return f;
}

static uint32_t idx_u32(gzFile f) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) {
        fprintf(stderr, "truncated IDX header\n");
        exit(2);
    }
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void idx_read(gzFile f, void *dst, size_t n) {
    unsigned char *p = dst;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(f, p, chunk);
        if (got <= 0) {
            fprintf(stderr, "truncated IDX data\n");
            exit(2);
        }
        p += got;
        n -= (size_t)got;
    }
}

static mnist_split mnist_load(const char *dir, const char *images, const char *labels) {
    mnist_split s;
    gzFile fi = idx_open(dir, images), fl = idx_open(dir, labels);
    if (idx_u32(fi) != 0x803 || idx_u32(fl) != 0x801) {
        fprintf(stderr, "bad IDX magic in %s\n", dir);
        exit(2);
    }
    s.n = (int)idx_u32(fi);
    int rows = (int)idx_u32(fi), cols = (int)idx_u32(fi);
    s.dim = rows * cols;
    if ((int)idx_u32(fl) != s.n) {
        fprintf(stderr, "image and label counts differ\n");
        exit(2);
    }
    size_t npx = (size_t)s.n * s.dim;
    unsigned char *px = malloc(npx);
    s.x = malloc(npx * sizeof(float));
    s.y = malloc((size_t)s.n);
    idx_read(fi, px, npx);
    idx_read(fl, s.y, (size_t)s.n);
    for (size_t i = 0; i < npx; i++) s.x[i] = (float)px[i] / 255.0f;
    free(px);
    gzclose(fi);
    gzclose(fl);
    return s;
}

#endif
