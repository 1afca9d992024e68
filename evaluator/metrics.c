/* Top-k accuracy counts (see metrics.h). */
#include "metrics.h"

int eval_label_rank(const float *scores, int n_classes, int label)
{
    float s = scores[label];
    int rank = 0;
    for (int c = 0; c < n_classes; c++)
        rank += scores[c] > s;
    return rank;
}

void eval_acc_add(struct eval_acc *a, int rank)
{
    a->n++;
    a->correct1 += rank < 1;
    a->correct5 += rank < 5;
}

double eval_acc_top1(const struct eval_acc *a)
{
    return a->n ? 100.0 * (double)a->correct1 / (double)a->n : 0.0;
}

double eval_acc_top5(const struct eval_acc *a)
{
    return a->n ? 100.0 * (double)a->correct5 / (double)a->n : 0.0;
}
