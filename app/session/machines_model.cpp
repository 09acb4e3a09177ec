// SPDX-License-Identifier: MIT
#include "session/machines_model.h"

#include <QBrush>

namespace together::gui {

MachinesModel::MachinesModel(QObject* parent)
    : QAbstractTableModel(parent)
{
}

int MachinesModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : static_cast<int>(m_rows.size()); }
int MachinesModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : ColumnCount; }

QVariant MachinesModel::headerData(int section, Qt::Orientation o, int role) const
{
    if (o != Qt::Horizontal || role != Qt::DisplayRole)
        return {};
    static const char* names[] = {"Machine", "State", "Cores", "Memory", "Donated", "Speed", "Round trip"};
    return section >= 0 && section < ColumnCount ? QVariant(names[section]) : QVariant();
}

const DiscoveredWorker* MachinesModel::worker(int row) const { return row >= 0 && row < rowCount() ? &m_rows[row].w : nullptr; }

int MachinesModel::rowOf(const std::string& address) const
{
    for (size_t i = 0; i < m_rows.size(); ++i)
        if (m_rows[i].w.address == address)
            return static_cast<int>(i);
    return -1;
}

Status MachinesModel::status(int row) const
{
    const Row& r = m_rows[row];
    if (!r.fault.isEmpty())
        return Status::Error;
    return statusOf(r.w.state);
}

QString MachinesModel::stateText(int row) const
{
    const Row& r = m_rows[row];
    if (!r.fault.isEmpty())
        return "error: " + r.fault;
    QString s = workerStateName(r.w.state);
    if (r.w.state == WorkerState::Ready && r.w.calibrating)
        s += " (calibrating)";
    if (!r.w.reason.empty())
        s += ": " + QString::fromStdString(r.w.reason);
    return s;
}

QVariant MachinesModel::cell(const Row& r, int column) const
{
    const DiscoveredWorker& w = r.w;
    switch (column) {
    case Machine:
        return w.host.empty() || w.host == w.address.substr(0, w.address.rfind(':')) ? QString::fromStdString(w.address)
                                                                                     : QString::fromStdString(w.host + "  " + w.address);
    case State:
        return stateText(static_cast<int>(&r - m_rows.data()));
    case Cores:
        return w.cores ? QVariant(QString::number(w.cores)) : QVariant(QString("—"));
    case Memory: {
        if (!w.memoryTotalBytes)
            return QString("—");
        QString s = formatBytes(w.memoryTotalBytes - w.memoryFreeBytes) + " used, " + formatBytes(w.memoryFreeBytes) + " free";
        if (r.planned)
            s += ", plan " + formatBytes(r.planned);
        return s;
    }
    case Donated: {
        QString threads = w.maxThreads ? QString::number(w.maxThreads) + " threads" : QString("all threads");
        QString mem = w.maxMemoryBytes ? formatBytes(w.maxMemoryBytes) : QString("free memory");
        return w.protocol ? threads + ", " + mem : QString("—");
    }
    case Speed:
        if (w.calibrating)
            return QString("calibrating…");
        if (!w.readGbps)
            return QString("—");
        return QString::number(*w.readGbps, 'f', 1) + " GB/s read";
    case RoundTrip:
        return w.rttMs >= 0 ? QString::number(w.rttMs, 'f', w.rttMs < 10 ? 2 : 0) + " ms" : QString("—");
    }
    return {};
}

QVariant MachinesModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || index.row() >= rowCount())
        return {};
    const Row& r = m_rows[index.row()];
    switch (role) {
    case Qt::DisplayRole:
    case Qt::AccessibleTextRole:
        return cell(r, index.column());
    case Qt::ToolTipRole:
        return stateText(index.row());
    case Qt::ForegroundRole:
        if (index.column() == State)
            return QBrush(statusColor(status(index.row())));
        return {};
    case Qt::DecorationRole:
        if (index.column() == Machine)
            return statusColor(status(index.row()));
        return {};
    case StatusRole:
        return static_cast<int>(status(index.row()));
    case MemoryTotalRole:
        return QVariant::fromValue<qulonglong>(r.w.memoryTotalBytes);
    case DonatedRole:
        return QVariant::fromValue<qulonglong>(r.w.maxMemoryBytes);
    case MemoryUsedRole:
        return QVariant::fromValue<qulonglong>(r.w.memoryTotalBytes - r.w.memoryFreeBytes);
    case PlannedRole:
        return QVariant::fromValue<qulonglong>(r.planned);
    case AddressRole:
        return QString::fromStdString(r.w.address);
    case ReasonRole:
        return stateText(index.row());
    }
    return {};
}

std::vector<QVariant> MachinesModel::snapshot(int row) const
{
    std::vector<QVariant> v;
    for (int c = 0; c < ColumnCount; ++c)
        v.push_back(cell(m_rows[row], c));
    v.push_back(static_cast<int>(status(row)));
    return v;
}

void MachinesModel::changed(int row, const std::vector<QVariant>& before)
{
    const auto after = snapshot(row);
    const bool statusChanged = before.back() != after.back();
    int first = -1, last = -1;
    for (int c = 0; c < ColumnCount; ++c)
        if (before[c] != after[c] || (statusChanged && (c == Machine || c == State))) {
            if (first < 0)
                first = c;
            last = c;
        }
    if (first >= 0)
        Q_EMIT dataChanged(index(row, first), index(row, last));
}

void MachinesModel::update(const DiscoveredWorker& w)
{
    for (size_t i = 0; i < m_rows.size(); ++i) {
        Row& r = m_rows[i];
        const bool same = (!w.id.empty() && r.w.id == w.id) || r.w.address == w.address;
        if (!same)
            continue;
        const auto before = snapshot(static_cast<int>(i));
        r.w = w;
        changed(static_cast<int>(i), before);
        return;
    }
    beginInsertRows({}, rowCount(), rowCount());
    m_rows.push_back({w, {}, 0});
    endInsertRows();
}

void MachinesModel::clear()
{
    beginResetModel();
    m_rows.clear();
    endResetModel();
}

void MachinesModel::setFault(const std::string& address, const QString& reason)
{
    const int row = rowOf(address);
    if (row < 0)
        return;
    const auto before = snapshot(row);
    m_rows[row].fault = reason;
    changed(row, before);
}

void MachinesModel::clearFaults()
{
    for (int i = 0; i < rowCount(); ++i)
        if (!m_rows[i].fault.isEmpty()) {
            const auto before = snapshot(i);
            m_rows[i].fault.clear();
            changed(i, before);
        }
}

void MachinesModel::setPlanned(const std::map<std::string, uint64_t>& bytesByWorker)
{
    for (int i = 0; i < rowCount(); ++i) {
        auto it = bytesByWorker.find(m_rows[i].w.address);
        const uint64_t planned = it == bytesByWorker.end() ? 0 : it->second;
        if (planned == m_rows[i].planned)
            continue;
        const auto before = snapshot(i);
        m_rows[i].planned = planned;
        changed(i, before);
    }
}

} // namespace together::gui
