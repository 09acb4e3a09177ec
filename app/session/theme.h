// SPDX-License-Identifier: MIT
#pragma once

#include "net/discovery.h"

#include <QColor>
#include <QString>

namespace together::gui {

// The states every pane shows, and their colours, defined once.
enum class Status { Ready, Working, Error, Gone, Checking };
QColor statusColor(Status s);
Status statusOf(WorkerState s);
QString statusName(Status s);

// The accent colour (the planned shard on memory bars, links, the send button).
QColor accentColor();

// "1.2 GiB", "640 MiB".
QString formatBytes(double bytes);

} // namespace together::gui
