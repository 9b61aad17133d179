/* The core's thread pool: workers created once and kept, woken for each parallel call.

   A call hands its task to n-1 workers and runs share 0 itself. Idle workers spin for a short while (the next call
   usually comes within microseconds during a forward pass or a quantization), then sleep on a condition variable.
   Inside a task, threads meet at spin barriers (tk_barrier_wait), so a whole forward pass is one call. The pool
   serves one call at a time; a call made while it is busy (another Python thread) runs on its own threads. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include "core.h"

#define TK_MAX_THREADS 256
#define SPIN_ROUNDS (1 << 17)

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

static struct {
    pthread_mutex_t busy;          /* held by the thread whose call the pool serves */
    pthread_mutex_t m;             /* with cv: sleeping workers */
    pthread_cond_t cv;
    atomic_uint generation;        /* bumped once per call */
    atomic_int pending;            /* shares of the current call not finished yet */
    atomic_int sleepers;
    int nworkers;
    tk_task_fn fn;
    void *arg;
    int n;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* generation current when each worker was created: its first call is the next one (a worker that starts late
   must not skip the call it was created for) */
static unsigned start_generation[TK_MAX_THREADS];

static void *worker_main(void *p) {
    const int id = (int)(intptr_t)p;  /* 1..nworkers */
    unsigned seen = start_generation[id];
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&pool.generation)) == seen) {
            if (++spins < SPIN_ROUNDS) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool.m);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.cv, &pool.m);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.m);
            spins = 0;
        }
        seen = g;
        if (id < pool.n) {
            pool.fn(pool.arg, id, pool.n);
            atomic_fetch_sub(&pool.pending, 1);
        }
    }
    return NULL;
}

/* Workers 1..want-1 exist afterwards, or as many as could be started; returns the count of threads available. */
static int grow(int want) {
    while (pool.nworkers + 1 < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_generation[pool.nworkers + 1] = atomic_load(&pool.generation);
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(pool.nworkers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.nworkers++;
    }
    return pool.nworkers + 1;
}

/* The pool is busy (a call from a second Python thread): threads of the call's own. Shares may meet at barriers,
   so they start only once every thread exists; if some cannot be created, the call runs as one share. */
struct own_call { tk_task_fn fn; void *arg; int n; atomic_int gate; /* 0 wait, 1 go, -1 give up */ };
struct own_job { struct own_call *call; int i; };

static void *own_main(void *p) {
    struct own_job *job = p;
    int g;
    while ((g = atomic_load(&job->call->gate)) == 0) cpu_relax();
    if (g > 0) job->call->fn(job->call->arg, job->i, job->call->n);
    return NULL;
}

static int run_own_threads(tk_task_fn fn, void *arg, int n) {
    pthread_t tid[TK_MAX_THREADS];
    struct own_job jobs[TK_MAX_THREADS];
    struct own_call call = {fn, arg, n, 0};
    int created = 1;
    for (; created < n; created++) {
        jobs[created] = (struct own_job){&call, created};
        if (pthread_create(&tid[created], NULL, own_main, &jobs[created]) != 0) break;
    }
    const int ok = created == n;
    atomic_store(&call.gate, ok ? 1 : -1);
    if (ok) fn(arg, 0, n);
    for (int i = 1; i < created; i++) pthread_join(tid[i], NULL);
    if (!ok) fn(arg, 0, 1);
    return ok ? n : 1;
}

int tk_parallel(tk_task_fn fn, void *arg, int nthreads) {
    if (nthreads > TK_MAX_THREADS) nthreads = TK_MAX_THREADS;
    if (nthreads <= 1) { fn(arg, 0, 1); return 1; }
    if (pthread_mutex_trylock(&pool.busy) != 0) return run_own_threads(fn, arg, nthreads);
    int n = grow(nthreads);
    if (n > nthreads) n = nthreads;
    if (n <= 1) {
        pthread_mutex_unlock(&pool.busy);
        fn(arg, 0, 1);
        return 1;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.n = n;
    atomic_store(&pool.pending, n - 1);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.m);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.m);
    }
    fn(arg, 0, n);
    while (atomic_load(&pool.pending) > 0) cpu_relax();
    pthread_mutex_unlock(&pool.busy);
    return n;
}

void tk_barrier_init(struct tk_barrier *b) {
    atomic_store(&b->count, 0);
    atomic_store(&b->phase, 0);
}

void tk_barrier_wait(struct tk_barrier *b, int n) {
    if (n <= 1) return;
    const int phase = atomic_load(&b->phase);
    if (atomic_fetch_add(&b->count, 1) == n - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->phase, 1);
        return;
    }
    int spins = 0;
    while (atomic_load(&b->phase) == phase) {
        cpu_relax();
        if (++spins > 4096) { sched_yield(); spins = 0; }
    }
}
