// SPDX-License-Identifier: MIT
#include "session/theme.h"

namespace together::gui {

QColor statusColor(Status s)
{
    switch (s) {
    case Status::Ready:
        return QColor(0x2e, 0x9d, 0x4f); // green
    case Status::Working:
        return QColor(0x1f, 0x6f, 0xd1); // blue
    case Status::Error:
        return QColor(0xd1, 0x2f, 0x2f); // red
    case Status::Gone:
        return QColor(0x80, 0x80, 0x80); // grey
    case Status::Checking:
        return QColor(0xc8, 0x8a, 0x12); // amber
    }
    return Qt::black;
}

Status statusOf(WorkerState s)
{
    switch (s) {
    case WorkerState::Ready:
        return Status::Ready;
    case WorkerState::Busy:
        return Status::Working;
    case WorkerState::Refused:
    case WorkerState::Unreachable:
        return Status::Error;
    case WorkerState::Gone:
        return Status::Gone;
    case WorkerState::Checking:
        return Status::Checking;
    }
    return Status::Checking;
}

QString statusName(Status s)
{
    switch (s) {
    case Status::Ready:
        return "ready";
    case Status::Working:
        return "working";
    case Status::Error:
        return "error";
    case Status::Gone:
        return "gone";
    case Status::Checking:
        return "checking";
    }
    return {};
}

QColor accentColor() { return QColor(0x6a, 0x4c, 0xd6); }

QString formatBytes(double bytes)
{
    const double gib = bytes / (1024.0 * 1024 * 1024);
    if (gib >= 1)
        return QString::number(gib, 'f', gib >= 10 ? 0 : 1) + " GiB";
    return QString::number(bytes / (1024.0 * 1024), 'f', 0) + " MiB";
}

} // namespace together::gui
