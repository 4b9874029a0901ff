// antares-fs: mounts the union of an upper directory, an optional CL layer and
// the Mega-backed lower layer. Everything lives in the daemon library
// (fs/fuse/daemon*.h), where it is unit-tested; this is only the entry point.
#include "fs/fuse/daemon.h"

int main(int argc, char** argv) { return antares::fs::daemon_main(argc, argv); }
