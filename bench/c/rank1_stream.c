/* Workload (f) of the benchmark suite, the peer of bench/circ/rank1.circ: the fused rank-1
 * update with decay W += eta * e x^T - lambda * W on an n × n f32 matrix, as a plain loop,
 * and the STREAM triad a = b + s * c measured in the same run, with T OpenMP threads (rows /
 * elements split statically).
 *
 * Build: cc -O3 -march=native -fopenmp rank1_stream.c -o rank1_stream
 * Usage: rank1_stream [--n 8192] [--reps 20] [--threads 1] [--stream-mb 256]
 * Prints one JSON line: the median time of one update (seconds) and its bandwidth (8 bytes per
 * synapse: W read and written), and the triad's median bandwidth (12 bytes per element, the
 * STREAM convention: write-allocate not counted).
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void rank1(float *restrict W, const float *restrict e, const float *restrict x, long n, float eta, float lambda) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float *w = W + i * n;
        for (long j = 0; j < n; j++) w[j] += eta * e[i] * x[j] - lambda * w[j];
    }
}

static void triad(float *restrict a, const float *restrict b, const float *restrict c, long m, float s) {
#pragma omp parallel for schedule(static)
    for (long k = 0; k < m; k++) a[k] = b[k] + s * c[k];
}

int main(int argc, char **argv) {
    long n = 8192, stream_mb = 256;
    int reps = 20, threads = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--stream-mb")) stream_mb = atol(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    omp_set_num_threads(threads);
    const long nn = n * n, m = stream_mb * 1024 * 1024 / (long)sizeof(float);
    float *W = aligned_alloc(64, (size_t)nn * sizeof(float));
    float *e = malloc((size_t)n * sizeof(float)), *x = malloc((size_t)n * sizeof(float));
    float *a = aligned_alloc(64, (size_t)m * sizeof(float)), *b = aligned_alloc(64, (size_t)m * sizeof(float)),
          *c = aligned_alloc(64, (size_t)m * sizeof(float));
    uint64_t s = 1;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < nn; i++) W[i] = (float)((i * 2654435761u) % 1000) * 1e-5f;
#pragma omp parallel for schedule(static)
    for (long k = 0; k < m; k++) a[k] = 0, b[k] = 1, c[k] = 2;
    double *tr = malloc((size_t)reps * sizeof(double)), *tt = malloc((size_t)reps * sizeof(double));
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        for (long i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            e[i] = (float)(s >> 40) / 16777216.0f - 0.5f;
            x[i] = (float)((s >> 16) & 0xFFFFFF) / 16777216.0f;
        }
        double t0 = now();
        rank1(W, e, x, n, 0.001f, 0.0001f);
        double t1 = now();
        triad(a, b, c, m, 3.0f);
        double t2 = now();
        if (r >= 0) tr[r] = t1 - t0, tt[r] = t2 - t1;
    }
    double checksum = 0;
    for (long i = 0; i < nn; i += 4099) checksum += W[i];
    checksum += a[m / 2];
    const double t_rank1 = median(tr, reps), t_triad = median(tt, reps);
    /* The mean too: circ reports its training time over all steps, i.e. the mean per update. */
    double t_mean = 0;
    for (int r = 0; r < reps; r++) t_mean += tr[r] / reps;
    printf("{\"peer\":\"c\",\"threads\":%d,\"n\":%ld,\"reps\":%d,\"rank1_mean_seconds\":%.6f,\"rank1_seconds\":%.6f,\"rank1_gbs\":%.3f,"
           "\"triad_mb\":%ld,\"triad_seconds\":%.6f,\"triad_gbs\":%.3f,\"checksum\":%.6g}\n",
           threads, n, reps, t_mean, t_rank1, 8.0 * (double)nn / t_rank1 / 1e9, stream_mb, t_triad,
           12.0 * (double)m / t_triad / 1e9, checksum);
    return 0;
}
