/* mimalloc's test/test-stress.c, ported to run through C function pointers.
 *
 * The threads are created by C (pthread_create), so Python never saw them: every allocation
 * and free goes through the function pointers pyslab's SlabAllocator.c_functions() hands out.
 * As in mimalloc: each thread allocates (calloc) blocks filled with a cookie pattern, keeps
 * half, frees at random, and swaps a quarter with a shared transfer array, so that blocks are
 * freed by other threads than the one that allocated them; the data array itself grows by
 * realloc. Threads are created and joined over several rounds; half the transfers survive each
 * round. Differences: no abort on corruption (it is counted), and block sizes scaled down so
 * that a run finishes in seconds with Python behind every call.
 *
 * Built by tests/reliability/test_c_abi.py with: cc -O2 -shared -fPIC -pthread stress.c
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);

#define TRANSFERS 1000
#define MAX_THREADS 256

static malloc_fn p_malloc;
static calloc_fn p_calloc;
static realloc_fn p_realloc;
static free_fn p_free;
static int scale;
static _Atomic(void *) transfer[TRANSFERS];
static const uintptr_t cookie = 0xbf58476d1ce4e5b9UL;
static atomic_long corrupt, nulls, allocs, frees;

static uintptr_t pick(uintptr_t *r) {
    uintptr_t x = *r; /* splitmix64, as mimalloc */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9UL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebUL;
    x ^= x >> 31;
    *r = x;
    return x;
}

static int chance(size_t perc, uintptr_t *r) { return (pick(r) % 100) <= perc; }

static void *alloc_items(size_t items, uintptr_t *r) {
    if (chance(1, r)) { /* large blocks: the fallback beyond the largest class */
        if (chance(1, r)) items *= 1000;
        else if (chance(10, r)) items *= 100;
        else items *= 10;
    }
    if (items == 0) items = 1;
    uintptr_t *p = p_calloc(items, sizeof(uintptr_t));
    if (p == NULL) {
        atomic_fetch_add(&nulls, 1);
        return NULL;
    }
    for (size_t i = 0; i < items; i++) {
        if (p[i] != 0) atomic_fetch_add(&corrupt, 1); /* calloc must zero */
        p[i] = (items - i) ^ cookie;
    }
    atomic_fetch_add(&allocs, 1);
    return p;
}

static void free_items(void *p) {
    if (p == NULL) return;
    uintptr_t *q = p;
    uintptr_t items = q[0] ^ cookie;
    for (uintptr_t i = 0; i < items; i++) {
        if ((q[i] ^ cookie) != items - i) {
            atomic_fetch_add(&corrupt, 1);
            break;
        }
    }
    p_free(p);
    atomic_fetch_add(&frees, 1);
}

static void *stress(void *arg) {
    intptr_t tid = (intptr_t)arg;
    uintptr_t r = (uintptr_t)(tid + 1) * 43;
    size_t todo = 100 * (size_t)scale * (size_t)(tid % 8 + 1);
    size_t retain = todo / 2;
    void **data = NULL;
    size_t data_size = 0, data_top = 0;
    void **retained = p_calloc(retain ? retain : 1, sizeof(void *));
    size_t retain_top = 0;
    if (retained == NULL) {
        atomic_fetch_add(&nulls, 1);
        return NULL;
    }
    while (todo > 0 || retain > 0) {
        if (retain == 0 || (chance(50, &r) && todo > 0)) {
            todo--;
            if (data_top >= data_size) {
                void **grown = p_realloc(data, (data_size + 100) * sizeof(void *));
                if (grown == NULL) {
                    atomic_fetch_add(&nulls, 1);
                    break;
                }
                data = grown;
                data_size += 100;
            }
            data[data_top++] = alloc_items((size_t)1 << (pick(&r) % 5), &r);
        } else {
            retained[retain_top++] = alloc_items((size_t)1 << (pick(&r) % 7), &r);
            retain--;
        }
        if (chance(66, &r) && data_top > 0) {
            size_t idx = pick(&r) % data_top;
            free_items(data[idx]);
            data[idx] = NULL;
        }
        if (chance(25, &r) && data_top > 0) {
            size_t idx = pick(&r) % data_top;
            size_t slot = pick(&r) % TRANSFERS;
            data[idx] = atomic_exchange(&transfer[slot], data[idx]);
        }
    }
    for (size_t i = 0; i < retain_top; i++) free_items(retained[i]);
    for (size_t i = 0; i < data_top; i++) free_items(data[i]);
    p_free(retained);
    p_free(data);
    return NULL;
}

/* Run `rounds` rounds of `threads` C threads; out = {corrupt, nulls, allocs, frees}.
 * Returns 0, or -1 when a thread could not be created. */
int pyslab_c_stress(malloc_fn m, calloc_fn c, realloc_fn re, free_fn f, int threads, int rounds,
                    int scale_, long out[4]) {
    p_malloc = m, p_calloc = c, p_realloc = re, p_free = f, scale = scale_;
    atomic_store(&corrupt, 0), atomic_store(&nulls, 0);
    atomic_store(&allocs, 0), atomic_store(&frees, 0);
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    for (int n = 0; n < rounds; n++) {
        pthread_t ids[MAX_THREADS];
        for (int i = 0; i < threads; i++)
            if (pthread_create(&ids[i], NULL, stress, (void *)(intptr_t)i) != 0) return -1;
        for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
        for (int i = 0; i < TRANSFERS; i++) /* half survive into the next round */
            if (n + 1 == rounds || i % 2) free_items(atomic_exchange(&transfer[i], NULL));
    }
    out[0] = atomic_load(&corrupt), out[1] = atomic_load(&nulls);
    out[2] = atomic_load(&allocs), out[3] = atomic_load(&frees);
    return 0;
}
