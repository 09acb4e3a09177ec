// SPDX-License-Identifier: MIT
#include "gui/stages_table.h"

#include "gui/plan_edit.h"
#include "session/app_session.h"

#include <QHBoxLayout>
#include <QHeaderView>
#include <QPushButton>
#include <QTableWidget>
#include <QVBoxLayout>

namespace together::gui {

namespace {

QString q(const std::string& s) { return QString::fromStdString(s); }

} // namespace

StagesTable::StagesTable(AppSession& session, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
{
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    m_table = new QTableWidget(0, 4);
    m_table->setAccessibleName("Stages");
    m_table->setHorizontalHeaderLabels({"First layer", "Last layer", "Machines", "Threads"});
    m_table->horizontalHeader()->setSectionResizeMode(2, QHeaderView::Stretch);
    m_table->setToolTip("Edit a cell to change the placement: machines and threads as comma-separated lists, one per tensor-parallel rank");
    layout->addWidget(m_table);
    auto* buttons = new QHBoxLayout;
    auto* addButton = new QPushButton("Add stage");
    addButton->setAccessibleName("Add stage");
    auto* removeButton = new QPushButton("Remove stage");
    removeButton->setAccessibleName("Remove stage");
    buttons->addWidget(addButton);
    buttons->addWidget(removeButton);
    buttons->addStretch(1);
    layout->addLayout(buttons);

    connect(m_table, &QTableWidget::itemChanged, this, [this] {
        if (!m_filling)
            tableEdited();
    });
    connect(addButton, &QPushButton::clicked, this, &StagesTable::addStage);
    connect(removeButton, &QPushButton::clicked, this, &StagesTable::removeStage);
}

void StagesTable::setEditable(bool editable)
{
    m_table->setEditTriggers(editable ? QAbstractItemView::DoubleClicked | QAbstractItemView::EditKeyPressed | QAbstractItemView::AnyKeyPressed
                                      : QAbstractItemView::NoEditTriggers);
}

void StagesTable::fill()
{
    m_filling = true;
    const Plan& p = m_session.plan();
    m_table->setRowCount(static_cast<int>(p.stages.size()));
    for (int s = 0; s < static_cast<int>(p.stages.size()); ++s) {
        const auto& st = p.stages[static_cast<size_t>(s)];
        QStringList machines, threads;
        for (auto& r : st.ranks) {
            machines << q(r.worker);
            threads << QString::number(r.threads);
        }
        const QString cells[] = {QString::number(st.firstLayer), QString::number(st.lastLayer), machines.join(", "), threads.join(", ")};
        for (int c = 0; c < 4; ++c) {
            auto* item = m_table->item(s, c);
            if (!item) {
                item = new QTableWidgetItem;
                m_table->setItem(s, c, item);
            }
            if (item->text() != cells[c])
                item->setText(cells[c]);
        }
        m_table->setVerticalHeaderItem(s, new QTableWidgetItem(QString("Stage %1").arg(s)));
    }
    m_filling = false;
}

void StagesTable::tableEdited()
{
    // The whole table is the plan: read every row back.
    Plan p;
    p.dtype = m_session.plan().dtype;
    for (int s = 0; s < m_table->rowCount(); ++s) {
        auto text = [&](int c) { return m_table->item(s, c) ? m_table->item(s, c)->text().trimmed() : QString(); };
        PlanStage st;
        bool ok1 = false, ok2 = false;
        st.firstLayer = text(0).toLongLong(&ok1);
        st.lastLayer = text(1).toLongLong(&ok2);
        if (!ok1 || !ok2) {
            Q_EMIT refused(QString("Stage %1: layers must be whole numbers").arg(s));
            fill();
            return;
        }
        const QStringList machines = text(2).split(',', Qt::SkipEmptyParts);
        const QStringList threads = text(3).split(',', Qt::SkipEmptyParts);
        for (int r = 0; r < machines.size(); ++r) {
            PlanRank rank;
            rank.worker = machines[r].trimmed().toStdString();
            bool ok = true;
            rank.threads = r < threads.size() ? threads[r].trimmed().toInt(&ok) : m_session.defaultThreads(rank.worker);
            if (!ok) {
                Q_EMIT refused(QString("Stage %1: threads must be whole numbers, one per machine").arg(s));
                fill();
                return;
            }
            st.ranks.push_back(rank);
        }
        p.stages.push_back(st);
    }
    Q_EMIT edited(p, "edit the stages table");
}

void StagesTable::addStage()
{
    // A new stage for whatever is not covered yet (else the last layer), on the first ready machine.
    const Plan& p = m_session.plan();
    const int64_t n = m_session.config().numLayers;
    auto per = layerRanks(p, n);
    int64_t first = -1, last = -1;
    for (int64_t l = 0; l < n; ++l)
        if (per[l].empty()) {
            if (first < 0)
                first = l;
            last = l;
        } else if (first >= 0) {
            break;
        }
    if (first < 0)
        first = last = n - 1;
    std::string worker;
    for (auto& w : m_session.readyWorkers())
        if (worker.empty())
            worker = w;
    if (worker.empty() || first < 0) {
        Q_EMIT refused("Not added: no machine is ready");
        return;
    }
    std::vector<int64_t> layers;
    for (int64_t l = first; l <= last; ++l)
        layers.push_back(l);
    Q_EMIT assignRequested(layers, worker);
}

void StagesTable::removeStage()
{
    const int row = m_table->currentRow();
    Plan p = m_session.plan();
    if (row < 0 || row >= static_cast<int>(p.stages.size())) {
        Q_EMIT refused("Select a stage's row first");
        return;
    }
    p.stages.erase(p.stages.begin() + row);
    Q_EMIT edited(p, QString("remove stage %1").arg(row));
}

} // namespace together::gui
