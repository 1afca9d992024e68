/* `swav status`: see status.c. */
#ifndef SWAV_LAUNCHER_STATUS_H
#define SWAV_LAUNCHER_STATUS_H

int swav_status_main(int argc, char **argv);

#endif
