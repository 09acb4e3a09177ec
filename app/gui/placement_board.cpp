// SPDX-License-Identifier: MIT
#include "gui/placement_board.h"

#include "base/error.h"
#include "base/files.h"
#include "gui/plan_edit.h"
#include "gui/stages_table.h"
#include "master/cost_model.h"
#include "session/app_session.h"
#include "session/theme.h"

#include <QAction>
#include <QApplication>
#include <QComboBox>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QLabel>
#include <QMenu>
#include <QScrollArea>
#include <QScrollBar>
#include <QTabWidget>
#include <QTableWidget>
#include <QToolButton>
#include <QUndoCommand>
#include <QUndoStack>
#include <QVBoxLayout>

#include <algorithm>
#include <map>

namespace together::gui {

namespace {

QString q(const std::string& s) { return QString::fromStdString(s); }


// One undoable board edit: the plan before and after.
class PlanCommand : public QUndoCommand {
public:
    PlanCommand(AppSession& session, bool& applying, Plan before, Plan after, const QString& text, bool applied)
        : QUndoCommand(text)
        , m_session(session)
        , m_applying(applying)
        , m_before(std::move(before))
        , m_after(std::move(after))
        , m_skip(applied)
    {
    }
    void redo() override
    {
        if (m_skip) { // it already happened (a proposal, a failover): only recorded
            m_skip = false;
            return;
        }
        set(m_after);
    }
    void undo() override { set(m_before); }

private:
    void set(const Plan& p)
    {
        m_applying = true;
        m_session.setPlan(p);
        m_applying = false;
    }
    AppSession& m_session;
    bool& m_applying;
    Plan m_before, m_after;
    bool m_skip;
};

} // namespace

// The undo stack is a child, destroyed after this object's members: clearing itself it emits indexChanged,
// whose handler reads this board (found by UBSan: a member access within a destroyed PlacementBoard).
PlacementBoard::~PlacementBoard() { m_undo->disconnect(this); }

PlacementBoard::PlacementBoard(AppSession& session, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
    , m_undo(new QUndoStack(this))
{
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    layout->addLayout(makeTools());
    QWidget* corner = makeCorner();
    layout->addWidget(makeTabs(corner));
    m_check = new QLabel;
    m_check->setWordWrap(true);
    m_check->setAccessibleDescription("Placement check"); // its name is its text: what a screen reader reads
    m_check->setTextInteractionFlags(Qt::TextSelectableByMouse | Qt::TextSelectableByKeyboard);
    layout->addWidget(m_check);
    m_message = new QLabel;
    m_message->setWordWrap(true);
    m_message->setAccessibleDescription("The board's last change, or why a drop was refused"); // its name is its text
    layout->addWidget(m_message);
    layout->addLayout(makeWhatIf());

    checkCandidates();
    connectParts();
    refresh();
}

QHBoxLayout* PlacementBoard::makeTools()
{
    auto* tools = new QHBoxLayout;
    m_autoPlace = new QPushButton("Auto place");
    m_autoPlace->setAccessibleName("Auto place");
    m_autoPlace->setToolTip("Measure the ready machines and their links, and fill the board with the cost model's best placement");
    auto button = [&](const QString& text, const QString& tip) {
        auto* b = new QPushButton(text);
        b->setAccessibleName(text);
        b->setToolTip(tip);
        tools->addWidget(b);
        return b;
    };
    tools->addWidget(m_autoPlace);
    m_assign = button("Assign to…", "Run the selected layers on one machine (select layers with click, Shift+click, arrows and Space)");
    m_add = button("Add to stage…", "Add a machine as a tensor-parallel rank of the selected layers' stage");
    m_remove = button("Remove rank…", "Take a tensor-parallel rank out of the selected layers' stage");
    m_remove->setAccessibleName("Remove from stage…");
    tools->addStretch(1);
    return tools;
}

QWidget* PlacementBoard::makeCorner()
{
    auto* corner = new QWidget;
    auto* cl = new QHBoxLayout(corner);
    cl->setContentsMargins(0, 0, 0, 2);
    cl->setSpacing(2);
    auto tool = [&](const QString& text, const QString& tip) {
        auto* t = new QToolButton;
        t->setText(text);
        t->setAccessibleName(text);
        t->setToolTip(tip);
        t->setAutoRaise(true);
        cl->addWidget(t);
        return t;
    };
    auto* undo = tool("Undo", "Undo the last board edit (Ctrl+Z)");
    auto* redo = tool("Redo", "Redo (Ctrl+Shift+Z)");
    auto* save = tool("Save plan…", "Write this placement as a plan file for `together-cli run --plan`");
    auto* load = tool("Load plan…", "Read a plan file (the CLI's --plan format)");
    auto* undoAct = new QAction("Undo", this);
    undoAct->setShortcut(QKeySequence::Undo);
    undoAct->setShortcutContext(Qt::WidgetWithChildrenShortcut);
    auto* redoAct = new QAction("Redo", this);
    redoAct->setShortcut(QKeySequence::Redo);
    redoAct->setShortcutContext(Qt::WidgetWithChildrenShortcut);
    addAction(undoAct);
    addAction(redoAct);
    connect(undoAct, &QAction::triggered, this, [this] {
        if (m_locked.isEmpty() && m_undo->canUndo()) {
            showMessage("Undone: " + m_undo->undoText(), false);
            m_undo->undo();
        }
    });
    connect(redoAct, &QAction::triggered, this, [this] {
        if (m_locked.isEmpty() && m_undo->canRedo()) {
            showMessage("Redone: " + m_undo->redoText(), false);
            m_undo->redo();
        }
    });
    connect(undo, &QToolButton::clicked, undoAct, &QAction::trigger);
    connect(redo, &QToolButton::clicked, redoAct, &QAction::trigger);
    auto states = [this, undo, redo] {
        undo->setEnabled(m_locked.isEmpty() && m_undo->canUndo());
        redo->setEnabled(m_locked.isEmpty() && m_undo->canRedo());
        undo->setToolTip(m_undo->canUndo() ? "Undo " + m_undo->undoText() + " (Ctrl+Z)" : "Nothing to undo");
        redo->setToolTip(m_undo->canRedo() ? "Redo " + m_undo->redoText() + " (Ctrl+Shift+Z)" : "Nothing to redo");
    };
    connect(m_undo, &QUndoStack::indexChanged, this, states);
    connect(this, &PlacementBoard::lockChanged, this, states);
    states();

    connect(save, &QToolButton::clicked, this, [this] {
        const QString path = QFileDialog::getSaveFileName(this, "Save plan", "plan.json", "Plan files (*.json)");
        if (!path.isEmpty()) {
            const QString why = savePlan(path);
            showMessage(why.isEmpty() ? "Saved " + path : why, !why.isEmpty());
        }
    });
    connect(load, &QToolButton::clicked, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, "Load plan", {}, "Plan files (*.json);;All files (*)");
        if (!path.isEmpty()) {
            const QString why = loadPlan(path);
            showMessage(why.isEmpty() ? "Loaded " + path : why, !why.isEmpty());
        }
    });
    return corner;
}

QTabWidget* PlacementBoard::makeTabs(QWidget* corner)
{
    m_tabs = new QTabWidget;
    m_canvas = new BoardCanvas;
    auto* scroll = new QScrollArea;
    scroll->setWidget(m_canvas);
    scroll->setWidgetResizable(true);
    scroll->setFrameShape(QFrame::StyledPanel);
    scroll->setMinimumHeight(2 * BoardCanvas::kLaneHeight + 8);
    scroll->setFocusPolicy(Qt::NoFocus); // Tab goes to the layer blocks, not to the frame around them
    m_scroll = scroll;
    m_tabs->addTab(scroll, "Board");

    m_stages = new StagesTable(m_session);
    m_tabs->addTab(m_stages, "Stages");
    m_tabs->setCornerWidget(corner);
    // The tabs take the board's height; the table scrolls within it.
    m_stages->setSizePolicy(QSizePolicy::Preferred, QSizePolicy::Ignored);
    m_tabs->setSizePolicy(QSizePolicy::Preferred, QSizePolicy::Maximum);
    return m_tabs;
}

QHBoxLayout* PlacementBoard::makeWhatIf()
{
    auto* whatIf = new QHBoxLayout;
    m_whatIf = new QComboBox;
    m_whatIf->addItem("as measured");
    for (auto& n : namedLinks())
        m_whatIf->addItem(q(n.name));
    m_whatIf->setAccessibleName("What-if links");
    auto* wl = new QLabel("What if every link were");
    wl->setBuddy(m_whatIf);
    m_whatIfLine = new QLabel;
    m_whatIfLine->setWordWrap(true);
    m_whatIfLine->setAccessibleName("What-if prediction");
    whatIf->addWidget(wl);
    whatIf->addWidget(m_whatIf);
    whatIf->addWidget(m_whatIfLine, 1);
    return whatIf;
}

void PlacementBoard::checkCandidates()
{
    m_canvas->setFit([this](Plan& plan, const std::string& target) {
        // A machine that runs several shards splits the threads it donates among them (its daemon refuses more).
        std::vector<PlanRank*> mine;
        int asked = 0;
        for (auto& st : plan.stages)
            for (auto& r : st.ranks)
                if (r.worker == target) {
                    mine.push_back(&r);
                    asked += r.threads;
                }
        const int donated = m_session.spareThreads(plan, target) + asked;
        const int n = static_cast<int>(mine.size());
        if (n > 0 && asked > donated && donated >= n)
            for (int i = 0; i < n; ++i)
                mine[static_cast<size_t>(i)]->threads = donated / n + (i < donated % n ? 1 : 0);
    });
    m_canvas->setCheck([this](const Plan& plan, const std::string& target) -> QString {
        try {
            plan.validate(m_session.config());
        } catch (const std::exception& e) {
            return e.what();
        }
        if (!target.empty() && m_session.spareThreads(plan, target) < 0)
            for (auto& w : m_session.workers())
                if (w.address == target)
                    return QString("%1 donates %2 threads: too few for one per shard it would run").arg(q(target)).arg(w.maxThreads ? w.maxThreads : w.cores);
        if (!target.empty())
            for (auto& w : m_session.workers())
                if (w.address == target && w.state != WorkerState::Ready)
                    return QString("%1 is %2%3")
                        .arg(q(target))
                        .arg(workerStateName(w.state))
                        .arg(w.reason.empty() ? QString() : ": " + q(w.reason));
        return {};
    });
}

void PlacementBoard::connectParts()
{
    connect(m_canvas, &BoardCanvas::edited, this, [this](const Plan& plan, const QString& what) { apply(plan, what); });
    connect(m_canvas, &BoardCanvas::refused, this, [this](const QString& why) { showMessage("Not moved: " + why, true); });
    // A hover's hint replaces a hint; it never wipes the result of the last drop (a refusal stays readable).
    connect(m_canvas, &BoardCanvas::hint, this, [this](const QString& text) {
        if (m_messageIsHint || !text.isEmpty()) {
            showMessage(text, false);
            m_messageIsHint = true;
        }
    });
    connect(m_canvas, &BoardCanvas::contextMenuRequested, this, [this](QPoint at) {
        QMenu menu(this);
        fillAssignMenu(*menu.addMenu("Assign to"));
        fillAddMenu(*menu.addMenu("Add to stage"));
        fillRemoveMenu(*menu.addMenu("Remove from stage"));
        menu.exec(at);
    });
    connect(m_autoPlace, &QPushButton::clicked, this, &PlacementBoard::autoPlaceRequested);
    connect(m_assign, &QPushButton::clicked, this, [this] { showAssignMenu(m_assign->mapToGlobal(QPoint(0, m_assign->height()))); });
    connect(m_add, &QPushButton::clicked, this, [this] { showAddMenu(m_add->mapToGlobal(QPoint(0, m_add->height()))); });
    connect(m_remove, &QPushButton::clicked, this, [this] { showRemoveMenu(m_remove->mapToGlobal(QPoint(0, m_remove->height()))); });
    connect(m_whatIf, &QComboBox::currentIndexChanged, this, [this] { refresh(); });
    connect(m_stages, &StagesTable::edited, this, &PlacementBoard::apply);
    connect(m_stages, &StagesTable::refused, this, [this](const QString& why) { showMessage(why, true); });
    connect(m_stages, &StagesTable::assignRequested, m_canvas, &BoardCanvas::assignTo);
    connect(&m_session, &AppSession::planChanged, this, [this] { refresh(); });
    connect(&m_session, &AppSession::workerUpdated, this, [this] { refresh(); });
    connect(&m_session, &AppSession::modelOpened, this, [this] {
        m_undo->clear();
        m_shown = {};
        refresh();
    });
}

void PlacementBoard::setLaunchOptions(const QString& dtype, int64_t context)
{
    m_dtype = dtype;
    m_context = context;
    refresh();
}

void PlacementBoard::setLocked(const QString& why)
{
    if (why == m_locked)
        return;
    m_locked = why;
    m_canvas->setReadOnly(why);
    m_autoPlace->setEnabled(why.isEmpty() && m_session.hasModel());
    m_stages->setEditable(why.isEmpty());
    Q_EMIT lockChanged();
    refresh();
}

void PlacementBoard::apply(const Plan& plan, const QString& what)
{
    if (!m_locked.isEmpty()) {
        showMessage("Not changed: " + m_locked, true);
        return;
    }
    Plan p = plan;
    if (p.dtype.empty())
        p.dtype = m_session.plan().dtype;
    if (samePlan(p, m_session.plan())) {
        m_stages->fill(); // a cell retyped to the same value
        return;
    }
    m_undo->push(new PlanCommand(m_session, m_applying, m_session.plan(), p, what, false));
    showMessage(what.isEmpty() ? QString() : what[0].toUpper() + what.mid(1), false);
}

QTableWidget* PlacementBoard::table() { return m_stages->table(); }

QString PlacementBoard::checkText() const { return m_check->text(); }
QString PlacementBoard::whatIfText() const { return m_whatIfLine->text(); }

void PlacementBoard::showMessage(const QString& text, bool error)
{
    m_messageIsHint = false;
    m_lastMessage = text;
    m_message->setStyleSheet(error ? "color:" + statusColor(Status::Error).name() : "color:#555");
    m_message->setText(text);
}

int PlacementBoard::selectedStage() const
{
    const auto& sel = m_canvas->selection();
    int64_t layer = -1;
    if (!sel.empty())
        layer = *sel.begin();
    else if (auto* b = qobject_cast<LayerBlock*>(QApplication::focusWidget()))
        layer = b->layer();
    return layer >= 0 ? stageOf(m_canvas->plan(), layer) : -1;
}

void PlacementBoard::showAssignMenu(QPoint at)
{
    QMenu menu(this);
    fillAssignMenu(menu);
    menu.exec(at);
}

void PlacementBoard::showAddMenu(QPoint at)
{
    QMenu menu(this);
    fillAddMenu(menu);
    menu.exec(at);
}

void PlacementBoard::showRemoveMenu(QPoint at)
{
    QMenu menu(this);
    fillRemoveMenu(menu);
    menu.exec(at);
}

void PlacementBoard::fillAssignMenu(QMenu& menu)
{
    const auto layers = std::vector<int64_t>(m_canvas->selection().begin(), m_canvas->selection().end());
    if (layers.empty()) {
        menu.addAction("Select layers first")->setEnabled(false);
        return;
    }
    for (auto* l : m_canvas->lanes()) {
        const std::string a = l->info().address;
        if (a.empty()) // the not-placed lane
            continue;
        QAction* act = menu.addAction(q(a), this, [this, layers, a] { m_canvas->assignTo(layers, a); });
        act->setEnabled(l->info().ready);
    }
}

void PlacementBoard::fillAddMenu(QMenu& menu)
{
    const int stage = selectedStage();
    if (stage < 0) {
        menu.addAction("Select a layer of the stage first")->setEnabled(false);
        return;
    }
    const auto& ranks = m_canvas->plan().stages[static_cast<size_t>(stage)].ranks;
    for (auto* l : m_canvas->lanes()) {
        const std::string a = l->info().address;
        if (a.empty() || std::any_of(ranks.begin(), ranks.end(), [&](const PlanRank& r) { return r.worker == a; }))
            continue;
        QString why = l->info().ready ? QString() : l->info().state;
        if (why.isEmpty())
            try {
                addRank(m_canvas->plan(), static_cast<size_t>(stage), PlanRank{a, 1, {}}).validate(m_session.config());
            } catch (const std::exception& e) {
                why = e.what();
            }
        QAction* act = menu.addAction(QString("%1 to stage %2").arg(q(a)).arg(stage) + (why.isEmpty() ? QString() : " — " + why), this,
                                      [this, stage, a] { m_canvas->addRankTo(stage, a); });
        act->setEnabled(why.isEmpty());
    }
}

void PlacementBoard::fillRemoveMenu(QMenu& menu)
{
    const int stage = selectedStage();
    if (stage < 0) {
        menu.addAction("Select a layer of the stage first")->setEnabled(false);
        return;
    }
    for (auto& r : m_canvas->plan().stages[static_cast<size_t>(stage)].ranks) {
        const std::string a = r.worker;
        menu.addAction(QString("%1 from stage %2").arg(q(a)).arg(stage), this, [this, stage, a] { m_canvas->removeRankFrom(stage, a); });
    }
}

std::vector<LaneInfo> PlacementBoard::laneInfos() const
{
    const Plan& plan = m_session.plan();
    const auto need = m_session.plannedBytes(m_dtype, m_context);
    std::vector<LaneInfo> out;
    std::map<std::string, uint64_t> hostNeed, hostFree;
    const auto workers = m_session.workers();
    for (auto& w : workers) {
        const std::string host = w.host.empty() ? w.address : w.host;
        auto it = need.find(w.address);
        hostNeed[host] += it == need.end() ? 0 : it->second;
        hostFree[host] = w.memoryFreeBytes;
    }
    for (auto& w : workers) {
        LaneInfo l;
        l.address = w.address;
        l.ready = w.state == WorkerState::Ready;
        l.state = workerStateName(w.state);
        l.threads = m_session.defaultThreads(w.address);
        auto it = need.find(w.address);
        l.needBytes = it == need.end() ? 0 : it->second;
        l.usableBytes = w.maxMemoryBytes ? std::min(w.memoryFreeBytes, w.maxMemoryBytes) : w.memoryFreeBytes;
        const std::string host = w.host.empty() ? w.address : w.host;
        l.overMemory = (l.usableBytes && l.needBytes > l.usableBytes) || (hostFree[host] && hostNeed[host] > hostFree[host]);
        out.push_back(l);
    }
    // The prediction per machine: each stage's compute and all-reduce, on every machine that runs it.
    if (const auto& pr = m_session.prediction(); pr && pr->stages.size() == plan.stages.size())
        for (auto& l : out) {
            double ms = 0;
            bool any = false;
            for (size_t s = 0; s < plan.stages.size(); ++s)
                for (auto& r : plan.stages[s].ranks)
                    if (r.worker == l.address) {
                        ms += pr->stages[s].computeMs + pr->stages[s].allReduceMs;
                        any = true;
                    }
            if (any)
                l.predictedMs = ms;
        }
    // Layers no stage covers (a gap typed in the table) sit in a lane of their own at the top, to be dragged.
    const auto per = layerRanks(plan, m_session.hasModel() ? m_session.config().numLayers : 0);
    if (!plan.stages.empty() && std::any_of(per.begin(), per.end(), [](const auto& r) { return r.empty(); })) {
        LaneInfo l;
        l.state = "run by no machine";
        out.insert(out.begin(), l);
    }
    // Machines the plan names that discovery does not know (a loaded plan file): a lane each, not ready.
    for (auto& st : plan.stages)
        for (auto& r : st.ranks)
            if (std::none_of(out.begin(), out.end(), [&](const LaneInfo& l) { return l.address == r.worker; })) {
                LaneInfo l;
                l.address = r.worker;
                l.state = "unknown";
                l.threads = r.threads;
                out.push_back(l);
            }
    return out;
}

void PlacementBoard::refresh()
{
    // A plan the board did not make (a proposal, a failover, a model opened) becomes an undo step too.
    const Plan& now = m_session.plan();
    if (!m_applying && !samePlan(now, m_shown) && !m_shown.stages.empty() && m_session.hasModel() && !now.stages.empty())
        m_undo->push(new PlanCommand(m_session, m_applying, m_shown, now, "placement", true));
    m_shown = now;

    m_canvas->setLayers(m_session.hasModel() ? m_session.config().numLayers : 0);
    m_canvas->show(now, laneInfos());
    // As tall as the lanes (up to eight before it scrolls): the pane's spare room goes below, not into the board.
    const int lanes = std::clamp(static_cast<int>(m_canvas->lanes().size()), 2, 8);
    m_scroll->setFixedHeight(lanes * BoardCanvas::kLaneHeight + 2 * m_scroll->frameWidth() + 2 +
                             (m_canvas->minimumSizeHint().width() > m_scroll->viewport()->width() ? m_scroll->horizontalScrollBar()->sizeHint().height() : 0));
    // The tabs are as tall as their tallest page: the table (which scrolls) is held to the board's height.
    table()->setMaximumHeight(std::max(60, m_scroll->height() - 34));
    m_stages->fill();
    m_autoPlace->setEnabled(m_locked.isEmpty() && m_session.hasModel());

    m_problem = m_session.planProblem(now);
    const QString memory = m_problem.isEmpty() ? m_session.memoryShortfall(m_dtype, m_context) : QString();
    if (!m_session.hasModel()) {
        m_check->setText({});
    } else if (m_session.launched()) {
        m_check->setStyleSheet("color:" + statusColor(Status::Ready).darker(130).name());
        m_check->setText(QString("Running: %1 stage%2, %3 rank%4. Unload to change the placement.")
                             .arg(now.stages.size())
                             .arg(now.stages.size() == 1 ? "" : "s")
                             .arg(now.rankCount())
                             .arg(now.rankCount() == 1 ? "" : "s"));
    } else if (!m_problem.isEmpty()) {
        m_check->setStyleSheet("color:" + statusColor(Status::Error).name());
        m_check->setText("Cannot launch: " + m_problem + ".");
    } else if (!memory.isEmpty()) {
        m_check->setStyleSheet("color:" + statusColor(Status::Working).name());
        m_check->setText(memory + " Launch warns before it starts.");
    } else {
        m_check->setStyleSheet("color:" + statusColor(Status::Ready).darker(130).name());
        QString text = QString("Valid: %1 stage%2, %3 rank%4.")
                           .arg(now.stages.size())
                           .arg(now.stages.size() == 1 ? "" : "s")
                           .arg(now.rankCount())
                           .arg(now.rankCount() == 1 ? "" : "s");
        if (!m_session.prediction() && !m_session.predictionNote().isEmpty())
            text += " No prediction: " + m_session.predictionNote() + ".";
        m_check->setText(text);
    }

    m_whatIfLine->clear();
    if (m_whatIf->currentIndex() > 0 && m_problem.isEmpty()) {
        LinkTable table;
        table.fallback = namedLink(m_whatIf->currentText().toStdString());
        QString why;
        if (auto p = m_session.predictPlan(now, &table, &why))
            m_whatIfLine->setText(QString("%1 ms/token · %2 tokens/s (links %3 ms, all-reduce %4 ms of it)")
                                      .arg(p->msPerToken, 0, 'f', 1)
                                      .arg(p->tokensPerSecond, 0, 'f', 1)
                                      .arg(p->linkMs(), 0, 'f', 1)
                                      .arg(p->allReduceMs(), 0, 'f', 1));
        else
            m_whatIfLine->setText("no prediction: " + why);
    }
}

QString PlacementBoard::savePlan(const QString& path) const
{
    Plan p = m_session.plan();
    if (p.stages.empty())
        return "there is no placement to save";
    if (p.dtype.empty())
        p.dtype = m_dtype.toStdString();
    try {
        atomicWrite(path.toStdString(), p.toJson()); // a failed write leaves the old file as it was
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

QString PlacementBoard::loadPlan(const QString& path)
{
    QFile f(path);
    if (!f.open(QIODevice::ReadOnly))
        return "cannot read " + path + ": " + f.errorString();
    if (f.size() > (1 << 20))
        return path + " is larger than a plan file can be (1 MiB)";
    try {
        const Plan p = Plan::fromJson(f.readAll().toStdString(), path.toStdString());
        if (!p.dtype.empty())
            Q_EMIT dtypeFromPlan(q(p.dtype));
        apply(p, "load " + QFileInfo(path).fileName());
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

} // namespace together::gui
