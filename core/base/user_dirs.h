// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

namespace together {

// Per-user folders, XDG style. Each has an override for tests and scripts:
//   config: $TOGETHER_CONFIG_DIR, else $XDG_CONFIG_HOME/together, else ~/.config/together  (cluster key, remembered workers)
//   state:  $TOGETHER_STATE_DIR,  else $XDG_STATE_HOME/together,  else ~/.local/state/together (worker id, logs)
//   cache:  $TOGETHER_CACHE_DIR,  else $XDG_CACHE_HOME/together,  else ~/.cache/together   (built-in model)
// Without $HOME they fall back to the temp folder. None is created here.
std::string configDir();
std::string stateDir();
std::string cacheDir();

// Creates `dir` and its parents with mode 0700 for any folder it makes; throws Error naming it.
void makePrivateDirs(const std::string& dir);

// Refuses (Error naming both) a path that does not resolve, symlinks followed, to a place inside one of
// `roots` (themselves canonical). With no roots nothing is allowed. A worker's shards read local model
// folders only where `serve --models-root` allows.
void checkModelFolderAllowed(const std::string& path, const std::vector<std::string>& roots);

} // namespace together
