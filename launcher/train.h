/* `swav train`: see train.c. */
#ifndef SWAV_LAUNCHER_TRAIN_H
#define SWAV_LAUNCHER_TRAIN_H

/* argv: the arguments after "train"; self_dir: the folder of the swav
 * binary (the role binaries are found beside it).  Returns an exit code. */
int swav_train_main(int argc, char **argv, const char *self_dir);

#endif
