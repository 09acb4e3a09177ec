// SPDX-License-Identifier: MIT
#pragma once

#include "session/machines_model.h"

#include <QWidget>

class QTableView;
class QLineEdit;
class QPushButton;
class QLabel;
class QPlainTextEdit;

namespace together::gui {

class AppSession;

// The Machines pane: every worker live (state with its reason, cores, memory with the planned shard, donated
// limits, speed, round trip), add by address, each machine's log, and the offer to start local workers.
class MachinesPane : public QWidget {
    Q_OBJECT
public:
    MachinesPane(AppSession& session, QWidget* parent = nullptr);
    MachinesModel& model() { return m_model; }
    QTableView* table() { return m_table; }
    // Shows the one-click offer of local workers (a first start that finds none).
    void offerLocalWorkers(bool show);
    QString selectedDetails() const;

private:
    void addByAddress();
    void showLog();
    void selectionChanged();
    AppSession& m_session;
    MachinesModel m_model;
    QTableView* m_table;
    QLineEdit* m_address;
    QPushButton* m_add;
    QPushButton* m_log;
    QLabel* m_details;
    QWidget* m_offer;
};

} // namespace together::gui
