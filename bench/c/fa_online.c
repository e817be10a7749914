/* Online feedback alignment on MNIST in plain C: the peer of workload (a) of the benchmark
 * suite, doing exactly the work of
 *   circ run stdlib/fa.circ --set depth=1 --set hidden=256 --set lr=0.01 --set momentum=0 \
 *       --no-shuffle --batch 1 --epochs 1
 * 784 -> hidden (ReLU) -> 10, no biases; forward weights uniform in ±1/sqrt(fan_in), the fixed
 * feedback matrix B (hidden × 10) uniform in ±1/sqrt(hidden); softmax cross-entropy error
 * o.e = softmax(o.a) - y, hidden error h.e = (B o.e) * step(h.a); plain SGD
 * W -= lr * h.e x^T, Wo -= lr * o.e h.r^T; batch 1, the 60,000 training images in file order,
 * one epoch. Every weight is updated every step (no skipping of zero inputs: a dense peer).
 *
 * Build: cc -O3 -march=native fa_online.c -o fa_online -lz -lm
 * Usage: fa_online MNIST_DIR [--hidden N] [--lr X] [--seed S] [--limit N] [--epochs E]
 * Prints one JSON line: train_seconds (the training loop only, wall clock), train_cpu_seconds,
 * test_acc, train_acc, ...
 */
#include "mnist_idx.h"
#include <math.h>
#include <time.h>

/* splitmix64: the initial weights' random stream. */
static uint64_t rng_state;
static uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform01(void) { return (double)(splitmix64() >> 11) * (1.0 / 9007199254740992.0); }
static void init_uniform(float *w, size_t n, double scale) {
    for (size_t i = 0; i < n; i++) w[i] = (float)((2.0 * uniform01() - 1.0) * scale);
}

/* out[i] = sum_j W[i, j] x[j]: 16 independent partial sums per row, so gcc vectorizes the
 * reduction without -ffast-math. */
static void matvec(const float *restrict W, const float *restrict x, float *restrict out, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        const float *w = W + (size_t)i * cols;
        float acc[16] = {0};
        int j = 0;
        for (; j + 16 <= cols; j += 16)
            for (int k = 0; k < 16; k++) acc[k] += w[j + k] * x[j + k];
        float s = 0;
        for (int k = 0; k < 16; k++) s += acc[k];
        for (; j < cols; j++) s += w[j] * x[j];
        out[i] = s;
    }
}

/* W[i, j] -= lr * e[i] * x[j] */
static void rank1_update(float *restrict W, const float *restrict e, const float *restrict x, int rows, int cols, float lr) {
    for (int i = 0; i < rows; i++) {
        float *w = W + (size_t)i * cols;
        const float a = lr * e[i];
        for (int j = 0; j < cols; j++) w[j] -= a * x[j];
    }
}

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MNIST_DIR [--hidden N] [--lr X] [--seed S] [--limit N] [--epochs E]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int H = 256, limit = 0, epochs = 1;
    float lr = 0.01f;
    uint64_t seed = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--hidden")) H = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lr")) lr = strtof(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--limit")) limit = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--epochs")) epochs = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    mnist_split tr = mnist_load(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte");
    mnist_split te = mnist_load(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
    const int D = tr.dim, K = 10;
    const int n = (limit > 0 && limit < tr.n) ? limit : tr.n;

    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    float *W = aligned_alloc(64, ((size_t)H * D * sizeof(float) + 63) / 64 * 64);
    float *Wo = malloc((size_t)K * H * sizeof(float));
    float *B = malloc((size_t)H * K * sizeof(float));
    init_uniform(W, (size_t)H * D, 1.0 / sqrt((double)D));
    init_uniform(Wo, (size_t)K * H, 1.0 / sqrt((double)H));
    init_uniform(B, (size_t)H * K, 1.0 / sqrt((double)H));
    float *ha = malloc(H * sizeof(float)), *hr = malloc(H * sizeof(float)), *he = malloc(H * sizeof(float));
    float oa[10], oe[10];

    double loss_sum = 0, correct = 0;
    const double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (int ep = 0; ep < epochs; ep++) {
        loss_sum = 0;
        correct = 0;
        for (int s = 0; s < n; s++) {
            const float *x = tr.x + (size_t)s * D;
            const int label = tr.y[s];
            /* forward */
            matvec(W, x, ha, H, D);
            for (int i = 0; i < H; i++) hr[i] = ha[i] > 0 ? ha[i] : 0;
            matvec(Wo, hr, oa, K, H);
            /* error: softmax cross-entropy */
            float m = oa[0];
            int pred = 0;
            for (int k = 1; k < K; k++)
                if (oa[k] > m) m = oa[k], pred = k;
            float z = 0;
            for (int k = 0; k < K; k++) z += (oe[k] = expf(oa[k] - m));
            for (int k = 0; k < K; k++) oe[k] = oe[k] / z - (k == label ? 1.0f : 0.0f);
            loss_sum += (double)(logf(z) + m - oa[label]);
            correct += pred == label;
            /* hidden error through the fixed feedback matrix */
            for (int i = 0; i < H; i++) {
                float s2 = 0;
                for (int k = 0; k < K; k++) s2 += B[i * K + k] * oe[k];
                he[i] = ha[i] > 0 ? s2 : 0;
            }
            /* plasticity: plain SGD on both forward pathways */
            rank1_update(W, he, x, H, D, lr);
            rank1_update(Wo, oe, hr, K, H, lr);
        }
    }
    const double train_seconds = now(CLOCK_MONOTONIC) - t0, train_cpu = now(CLOCK_PROCESS_CPUTIME_ID) - c0;

    int test_correct = 0;
    for (int s = 0; s < te.n; s++) {
        const float *x = te.x + (size_t)s * D;
        matvec(W, x, ha, H, D);
        for (int i = 0; i < H; i++) hr[i] = ha[i] > 0 ? ha[i] : 0;
        matvec(Wo, hr, oa, K, H);
        int pred = 0;
        for (int k = 1; k < K; k++)
            if (oa[k] > oa[pred]) pred = k;
        test_correct += pred == te.y[s];
    }
    printf("{\"peer\":\"c\",\"hidden\":%d,\"batch\":1,\"steps\":%d,\"train_seconds\":%.6f,\"train_cpu_seconds\":%.6f,"
           "\"train_loss\":%.6f,\"train_acc\":%.6f,\"test_acc\":%.6f}\n",
           H, n * epochs, train_seconds, train_cpu, loss_sum / n, correct / n, (double)test_correct / te.n);
    return 0;
}
