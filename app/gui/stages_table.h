// SPDX-License-Identifier: MIT
#pragma once

#include "model/plan.h"

#include <QWidget>

#include <cstdint>
#include <string>
#include <vector>

class QTableWidget;

namespace together::gui {

class AppSession;

// The placement board's "Stages" page: the session's plan as one row per stage (first and last layer, its
// machines and their threads as comma-separated lists, one per tensor-parallel rank), with Add stage and
// Remove stage. The whole table is the plan: an edited cell reads every row back into one. It changes nothing
// itself; the board applies what it emits (undoably, or not when it is locked).
class StagesTable : public QWidget {
    Q_OBJECT
public:
    explicit StagesTable(AppSession& session, QWidget* parent = nullptr);

    QTableWidget* table() { return m_table; }
    void fill(); // from the session's plan
    void setEditable(bool editable);

Q_SIGNALS:
    void edited(const together::Plan& plan, const QString& what);
    void refused(const QString& why); // a cell that does not parse, a button with nothing to act on
    // Add stage: the layers no stage covers (else the last one) to the first ready machine.
    void assignRequested(const std::vector<int64_t>& layers, const std::string& worker);

private:
    void tableEdited();
    void addStage();
    void removeStage();

    AppSession& m_session;
    QTableWidget* m_table;
    bool m_filling = false;
};

} // namespace together::gui
