#include <pthread.h>
#include "core.h"

#define TK_MAX_THREADS 256

struct tk_job { tk_task_fn fn; void *arg; int i, n; };

static void *tk_job_main(void *p) {
    struct tk_job *job = p;
    job->fn(job->arg, job->i, job->n);
    return NULL;
}

void tk_parallel(tk_task_fn fn, void *arg, int nthreads) {
    if (nthreads > TK_MAX_THREADS) nthreads = TK_MAX_THREADS;
    if (nthreads <= 1) { fn(arg, 0, 1); return; }
    pthread_t tid[TK_MAX_THREADS];
    struct tk_job jobs[TK_MAX_THREADS];
    int started = 1;
    for (int i = 1; i < nthreads; i++) {
        jobs[i] = (struct tk_job){fn, arg, i, nthreads};
        if (pthread_create(&tid[i], NULL, tk_job_main, &jobs[i]) != 0) break;
        started++;
    }
    /* If a thread could not be created, the calling thread does its share as well. */
    for (int i = 0; i < nthreads; i++) {
        if (i == 0 || i >= started) fn(arg, i, nthreads);
    }
    for (int i = 1; i < started; i++) pthread_join(tid[i], NULL);
}
