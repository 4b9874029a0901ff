// A walk of a source tree the way `buck2 targets //...` walks it (what
// docs/repro.md describes under "The walker"): read `.buckconfig`; breadth-first
// readdir with d_type, many directories in flight; in every directory whose
// listing has a buildfile (BUCK.v2, BUCK), read each PACKAGE of the directory
// and its parents (root first) and then the buildfile; read the .bzl files it
// load()s, transitively; list the package's subtree down to sub-packages; for a
// share of the sources, lstat every path component and read the file whole;
// meanwhile write and rename files under buck-out/. Every operation goes
// through PathOps and is recorded. Works on any directory: a FUSE mount or a
// plain local tree (the unit tests).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "repro/event.h"

namespace antares::repro {

struct WalkOptions {
  std::string root;              // the directory to walk
  unsigned threads = 16;         // worker threads (reads run this many at a time)
  unsigned dirs_in_flight = 64;  // concurrent directory listings (at most `threads`)
  double source_share = 0.2;     // share of sources lstat'ed and read, 0..1
  uint64_t seed = 1;             // picks the sources (with `iteration`)
  uint64_t iteration = 0;        // a loop counter: another walk reads other sources
  bool write_buck_out = true;    // write + rename one file per package under buck-out/
  bool lstat_entries = false;    // lstat every entry the breadth-first pass lists (bench/walk)
  bool list_package_globs = true;  // list each package's subtree again, as its glob()s do
  std::string buck_out = "buck-out/v2/gen";
  const std::atomic<bool>* stop = nullptr;  // checked between operations
};

struct WalkSummary {
  uint64_t dirs = 0, packages = 0, package_files = 0, buildfiles = 0, bzl = 0, sources = 0, writes = 0;
  uint64_t errors = 0;  // failed operations of any kind
  int64_t start_us = 0, end_us = 0;
  bool stopped = false;
};

// One full walk; thread-safe to run several Walkers at once on different
// recorders. Never throws; failures are recorded events.
WalkSummary walk(const WalkOptions& opts, Recorder* rec);

// Whether `path` is among the sources a walk with (seed, iteration, share) reads.
bool source_selected(const std::string& path, uint64_t seed, uint64_t iteration, double share);

}  // namespace antares::repro
