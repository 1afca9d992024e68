/* `swav prepare`: turn a packaged data set into ImageFolder JPEG folders. */
#ifndef SWAV_LAUNCHER_PREPARE_H
#define SWAV_LAUNCHER_PREPARE_H

/* swav prepare fashion-mnist OUT [--source DIR] [--quality Q] [--limit N]:
 * returns a process exit code. */
int swav_prepare_main(int argc, char **argv);

#endif
