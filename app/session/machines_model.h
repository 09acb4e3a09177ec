// SPDX-License-Identifier: MIT
#pragma once

#include "net/discovery.h"
#include "session/theme.h"

#include <QAbstractTableModel>

#include <map>

namespace together::gui {

// Every worker, one row each, in the order first seen: rows never move. An update changes its row's cells in
// place (dataChanged for the cells that differ), so views hold still while discovery ticks every 2 s.
class MachinesModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { Machine, State, Cores, Memory, Donated, Speed, RoundTrip, ColumnCount };
    enum Role {
        StatusRole = Qt::UserRole + 1, // gui::Status as int
        MemoryTotalRole,               // bytes
        MemoryUsedRole,                // bytes in use by anything
        DonatedRole,                   // bytes donated (0: whatever is free)
        PlannedRole,                   // bytes the current placement would put there
        AddressRole,
        ReasonRole,
    };
    explicit MachinesModel(QObject* parent = nullptr);

    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role) const override;
    QVariant headerData(int section, Qt::Orientation o, int role) const override;

    void update(const DiscoveredWorker& w);
    void clear(); // only when discovery starts again (a new key), never on a tick
    // A fault seen by the controller (a shard died, stalled): the row turns red with the reason until cleared.
    void setFault(const std::string& address, const QString& reason);
    void clearFaults();
    void setPlanned(const std::map<std::string, uint64_t>& bytesByWorker);

    const DiscoveredWorker* worker(int row) const;
    int rowOf(const std::string& address) const;
    Status status(int row) const;
    QString stateText(int row) const; // "ready", "unreachable: port 7600 does not answer", "error: …"

private:
    struct Row {
        DiscoveredWorker w;
        QString fault;
        uint64_t planned = 0;
    };
    QVariant cell(const Row& r, int column) const;
    void changed(int row, const std::vector<QVariant>& before);
    std::vector<QVariant> snapshot(int row) const;
    std::vector<Row> m_rows;
};

} // namespace together::gui
