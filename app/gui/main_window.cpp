// SPDX-License-Identifier: MIT
#include "gui/main_window.h"

#include "base/error.h"
#include "gui/charts_pane.h"
#include "gui/chat_pane.h"
#include "gui/key_dialog.h"
#include "gui/launch_pane.h"
#include "gui/machines_pane.h"
#include "gui/models_dialog.h"
#include "gui/performance_pane.h"
#include "model/random_model.h"
#include "model/run_dtype.h"
#include "session/app_session.h"
#include "session/settings.h"
#include "session/theme.h"

#include <QAction>
#include <QCloseEvent>
#include <QDockWidget>
#include <QDoubleSpinBox>
#include <QSpinBox>
#include <QFileDialog>
#include <QFileInfo>
#include <QLabel>
#include <QMessageBox>
#include <QPlainTextEdit>
#include <QScrollArea>
#include <QStatusBar>
#include <QTimer>
#include <QToolBar>
#include <QVBoxLayout>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace together::gui {

namespace {
bool sameFolder(const QString& a, const QString& b)
{
    std::error_code ec1, ec2;
    auto x = std::filesystem::weakly_canonical(a.toStdString(), ec1);
    auto y = std::filesystem::weakly_canonical(b.toStdString(), ec2);
    return !ec1 && !ec2 && x == y;
}

} // namespace

MainWindow::MainWindow(const StartOptions& options, QWidget* parent)
    : QMainWindow(parent)
    , m_options(options)
    , m_session(new AppSession(this))
{
    setWindowTitle("together");
    setObjectName("mainWindow");
    setDockOptions(QMainWindow::AnimatedDocks | QMainWindow::AllowTabbedDocks | QMainWindow::AllowNestedDocks);
    buildCentre();
    buildDocks();
    QAction* openAct = buildToolBar();
    connectPanes(openAct);
    connectSession();
    restoreSettings();
    startSession();
}

MainWindow::~MainWindow() = default;

void MainWindow::buildCentre()
{
    // The chat in the middle, under the banner.
    auto* centre = new QWidget;
    centre->setAccessibleName("Chat");
    centre->setObjectName("chatPane");
    auto* cl = new QVBoxLayout(centre);
    cl->setContentsMargins(4, 4, 4, 4);
    m_banner = new QLabel("Random weights: output is noise. Open a real model folder (Models… or Open model folder…) for text that means something.");
    m_banner->setAccessibleName("Random weights: output is noise");
    m_banner->setWordWrap(true);
    m_banner->setStyleSheet("background:#fff3c4; color:#5a4300; padding:6px; border:1px solid #e0c060; border-radius:4px");
    m_banner->hide();
    cl->addWidget(m_banner);
    m_chat = new ChatPane(*m_session, ConversationStore::defaultPath());
    cl->addWidget(m_chat);
    setCentralWidget(centre);
}

void MainWindow::buildDocks()
{
    m_machines = new MachinesPane(*m_session);
    m_launch = new LaunchPane(*m_session);
    auto* machinesDock = dock("Machines", m_machines, Qt::LeftDockWidgetArea);
    auto* scroll = new QScrollArea;
    scroll->setWidget(m_launch);
    scroll->setWidgetResizable(true);
    scroll->setFrameShape(QFrame::NoFrame);
    // The pane wraps to the dock's width; a dock dragged narrower than its buttons scrolls instead of cutting.
    auto* placementDock = dock("Placement", scroll, Qt::LeftDockWidgetArea);
    m_charts = new ChartsPane;
    m_charts->setTraceSource([this](size_t lastSteps) -> std::string {
        Controller* c = m_session->controller();
        return c ? c->chromeTrace(lastSteps) : std::string("[]");
    });
    auto* charts = dock("Charts", m_charts, Qt::BottomDockWidgetArea);
    m_performance = new PerformancePane(*m_session);
    m_performance->setChartsSaver([this](const QString& prefix) { return m_charts->saveCharts(prefix); });
    auto* perf = dock("Performance", m_performance, Qt::BottomDockWidgetArea);
    tabifyDockWidget(charts, perf);
    charts->raise();
    // A first start: the machines and the placement get room; a saved layout (below) replaces this.
    // The left column (machines over the placement) runs the window's full height; charts sit under the chat.
    setCorner(Qt::BottomLeftCorner, Qt::LeftDockWidgetArea);
    // Sized once the window has its size (a dock's share is worked out against it); a saved layout wins.
    if (!m_settings.contains("windowState"))
        QTimer::singleShot(0, this, [this, machinesDock, placementDock, charts] {
            resizeDocks({machinesDock}, {std::max(560, width() * 46 / 100)}, Qt::Horizontal);
            resizeDocks({machinesDock, placementDock}, {200, std::max(400, height() - 270)}, Qt::Vertical);
            resizeDocks({charts}, {std::max(320, height() / 2)}, Qt::Vertical);
        });
}

QAction* MainWindow::buildToolBar()
{
    auto* tools = addToolBar("Main");
    tools->setObjectName("mainToolBar");
    QAction* openAct = tools->addAction("Open model folder…", this, [this] {
        const QString dir = QFileDialog::getExistingDirectory(this, "Open model folder", m_settings.value("lastModel").toString());
        if (!dir.isEmpty())
            openModel(dir);
    });
    openAct->setShortcut(QKeySequence::Open);
    tools->addAction("Open GGUF file…", this, [this] {
        const QString file = QFileDialog::getOpenFileName(this, "Open GGUF model", m_settings.value("lastModel").toString(),
                                                          "GGUF models (*.gguf);;All files (*)");
        if (!file.isEmpty())
            openModel(file);
    });
    tools->addAction("Models…", this, &MainWindow::browseModels);
    tools->addAction("Cluster key…", this, &MainWindow::showKeyDialog);
    return openAct;
}

void MainWindow::connectPanes(QAction* openAct)
{
    connect(m_launch, &LaunchPane::openModelRequested, openAct, &QAction::trigger);
    connect(m_launch, &LaunchPane::browseModelsRequested, this, &MainWindow::browseModels);
    connect(m_launch, &LaunchPane::proposeRequested, this, [this] {
        m_proposing = true;
        m_launch->setProposing(true);
        m_session->proposePlacement(m_launch->dtype(), m_launch->context());
    });
    connect(m_chat, &ChatPane::answerFinished, this, [this] {
        for (auto it = m_chat->conversation().messages.rbegin(); it != m_chat->conversation().messages.rend(); ++it)
            if (it->role == ChatMessage::Role::Assistant) {
                m_charts->addTimeToFirstToken(it->ttftMs);
                break;
            }
    });
    connect(m_performance, &PerformancePane::benchRunning, this, [this](bool on) {
        m_chat->setLaunched(!on && m_session->launched());
        m_launch->setBusy(on ? "a bench is running" : QString());
    });
    connect(m_performance, &PerformancePane::verifyRunning, this,
            [this](bool on) { m_launch->setBusy(on ? "Verify is running the placement's check on these machines" : QString()); });
    m_performance->setBusyCheck([this]() -> QString {
        if (m_chat->generating())
            return "a chat answer is streaming";
        if (m_launch->launching())
            return "a launch is under way";
        return {};
    });
}

void MainWindow::connectSession()
{
    connect(m_session, &AppSession::controllerReset, this, [this] {
        m_chat->controllerReset();
        m_launch->controllerReset();
    });
    connect(m_session, &AppSession::keyChanged, m_launch, &LaunchPane::refresh);
    connect(m_session, &AppSession::status, this, [this](const QString& s) { statusBar()->showMessage(s, 8000); });
    connect(m_session, &AppSession::modelOpened, this, &MainWindow::onModelOpened);
    connect(m_session, &AppSession::modelFailed, this, [this](const QString& dir, const QString& why) {
        statusBar()->showMessage("cannot open " + dir + ": " + why);
        QMessageBox::warning(this, "Open model", "Cannot open " + dir + ":\n" + why);
    });
    connect(m_session, &AppSession::planChanged, this, [this] {
        m_performance->refresh();
        m_charts->setPrediction(m_session->prediction() ? m_session->prediction()->msPerToken : 0);
        m_launch->refresh();
        m_machines->model().setPlanned(m_session->plannedBytes(m_launch->dtype(), m_launch->context()));
    });
    connect(m_session, &AppSession::placementProposed, this, [this](const QString& why) {
        m_proposing = false;
        m_launch->setProposing(false);
        m_launch->setExplanation(why);
    });
    connect(m_session, &AppSession::placementFailed, this, [this](const QString& why) {
        m_proposing = false;
        m_launch->setProposing(false);
        m_launch->setExplanation("No placement: " + why);
    });
    connect(m_session, &AppSession::localWorkersFailed, this, [this](const QString& why) {
        statusBar()->showMessage("local workers: " + why);
        QMessageBox::warning(this, "Local workers", "Cannot start the local workers:\n" + why);
    });
    m_proposeTimer = new QTimer(this);
    m_proposeTimer->setSingleShot(true);
    m_proposeTimer->setInterval(800);
    connect(m_proposeTimer, &QTimer::timeout, this, &MainWindow::maybePropose);
    connect(m_session, &AppSession::localWorkersStarted, m_proposeTimer, qOverload<>(&QTimer::start));
    connect(m_session, &AppSession::workerUpdated, this, [this] {
        if (!m_session->hasPlan())
            m_proposeTimer->start();
        m_machines->model().setPlanned(m_session->plannedBytes(m_launch->dtype(), m_launch->context()));
    });
    connect(m_session, &AppSession::controllerEvent, this, &MainWindow::onControllerEvent);
}

void MainWindow::onControllerEvent(const ControllerEvent& e)
{
    if (e.kind == ControllerEvent::Kind::Log)
        statusBar()->showMessage(QString::fromStdString(e.text), 8000);
    if (e.kind == ControllerEvent::Kind::LaunchFailed) // also where it is seen whatever the panes show
        statusBar()->showMessage("launch failed: " + QString::fromStdString(e.text), 30000);
    if (e.kind == ControllerEvent::Kind::Step)
        m_charts->addStep(e.step);
    // A chat reply is one of the session's runs; a bench's generations are the pane's own.
    const bool chatRun = e.kind == ControllerEvent::Kind::Ended && !m_performance->benching() && e.result.decodeSteps > 0;
    m_launch->onControllerEvent(e);
    m_chat->onControllerEvent(e);
    if (chatRun)
        m_performance->addChatRun(static_cast<int>(e.result.promptTokens), static_cast<int>(e.result.tokens.size()),
                                  e.result.prefillSeconds * 1000.0,
                                  e.result.decodeSeconds > 0 ? e.result.decodeSteps / e.result.decodeSeconds : 0);
    // After the launch and chat panes: what the bench waits for is their state after this event.
    m_performance->onControllerEvent(e);
    if (e.kind == ControllerEvent::Kind::Launched) {
        m_machines->model().clearFaults();
        m_chat->setLaunched(!m_performance->benching()); // a bench's variants launch too: the chat waits for its end
    } else if (e.kind == ControllerEvent::Kind::LaunchFailed || e.kind == ControllerEvent::Kind::Unloaded ||
               e.kind == ControllerEvent::Kind::Failed) {
        m_chat->setLaunched(m_session->launched());
    }
    const bool failingOver = e.kind == ControllerEvent::Kind::Notice && e.text.find("failing over") != std::string::npos;
    if (e.kind == ControllerEvent::Kind::Failed || e.kind == ControllerEvent::Kind::LaunchFailed || failingOver) {
        // The machine the message names turns red with the reason.
        auto& model = m_machines->model();
        for (int row = 0; row < model.rowCount(); ++row) {
            const std::string& a = model.worker(row)->address;
            if (!a.empty() && e.text.find(a) != std::string::npos)
                model.setFault(a, QString::fromStdString(e.text));
        }
    }
}

void MainWindow::restoreSettings()
{
    m_launch->setDtype(m_options.dtype.isEmpty() ? m_settings.value("dtype", QString::fromStdString(defaultDtypeName())).toString() : m_options.dtype);
    m_launch->setContext(m_settings.value("context", 4096).toInt());
    m_chat->temperatureBox()->setValue(m_settings.value("temperature", 0.8).toDouble());
    m_chat->maxTokensBox()->setValue(m_settings.value("maxTokens", 256).toInt());
    resize(1280, 800);
    restoreGeometry(m_settings.value("geometry").toByteArray());
    restoreState(m_settings.value("windowState").toByteArray());
    if (!m_settings.problem().isEmpty())
        statusBar()->showMessage(m_settings.problem(), 30000);

    // A person starts by typing: the message field has the focus once the window shows.
    QTimer::singleShot(0, this, [this] { m_chat->input()->setFocus(); });
}

void MainWindow::startSession()
{
    // Without a usable key nothing can be reached: the constructor throws and main() says why.
    const QString keyFile = !m_options.keyFile.isEmpty() ? m_options.keyFile : m_settings.value("keyFile").toString();
    m_session->useKeyFile(keyFile);
    m_settings.setValue("keyFile", m_session->keyFile());
    saveSettingsFile();
    m_session->startDiscovery(m_options.localWorkers == 0 && m_options.broadcast);
    if (m_options.localWorkers > 0)
        m_session->startLocalWorkers(m_options.localWorkers, m_options.localWorkerArgs);
    else
        QTimer::singleShot(4000, this, [this] { m_machines->offerLocalWorkers(true); });

    QString model = m_options.model;
    if (model.isEmpty()) {
        const QString last = m_settings.value("lastModel").toString();
        if (!last.isEmpty() && (QFileInfo(last + "/config.json").exists() || (last.endsWith(".gguf") && QFileInfo(last).isFile())))
            model = last;
    }
    if (!model.isEmpty()) {
        openModel(model);
    } else {
        m_session->openDefaultModel(); // the built-in random model, written once
    }
}

QDockWidget* MainWindow::dock(const QString& name, QWidget* content, Qt::DockWidgetArea area)
{
    auto* d = new QDockWidget(name, this);
    d->setObjectName(name.toLower() + "Dock");
    d->setAccessibleName(name);
    d->setWidget(content);
    d->setFeatures(QDockWidget::DockWidgetMovable | QDockWidget::DockWidgetFloatable | QDockWidget::DockWidgetClosable);
    addDockWidget(area, d);
    return d;
}

void MainWindow::openModel(const QString& dir) { m_session->openModel(dir); }

void MainWindow::onModelOpened(const QString& dir)
{
    Settings& settings = m_settings;
    settings.setValue("lastModel", dir);
    QStringList recent = settings.value("recentModels").toStringList();
    recent.removeAll(dir);
    recent.prepend(dir);
    while (recent.size() > 10)
        recent.removeLast();
    settings.setValue("recentModels", recent);
    saveSettingsFile();
    m_banner->setVisible(sameFolder(dir, QString::fromStdString(defaultModelDir())));
    m_chat->modelChanged(m_session->modelHasChatTemplate());
    if (m_options.dtype.isEmpty()) // the model's own default: native for a quantized GGUF (its blocks as they are)
        m_launch->setDtype(m_session->modelDefaultDtype());
    m_launch->refresh();
    statusBar()->showMessage("opened " + dir, 5000);
    setWindowTitle("together — " + QFileInfo(dir).fileName());
    if (!m_options.plan.isEmpty() && !m_planLoaded)
        loadPlanFile();
    else
        maybePropose();
}

void MainWindow::loadPlanFile()
{
    m_planLoaded = true;
    try {
        std::ifstream f(m_options.plan.toStdString());
        if (!f)
            throw Error("cannot read " + m_options.plan.toStdString());
        std::stringstream ss;
        ss << f.rdbuf();
        Plan p = Plan::fromJson(ss.str(), m_options.plan.toStdString());
        p.validate(m_session->config());
        if (!p.dtype.empty())
            m_launch->setDtype(QString::fromStdString(p.dtype));
        m_session->setPlan(p, "placement from " + m_options.plan);
        m_launch->setExplanation("From " + m_options.plan + ".");
    } catch (const std::exception& e) {
        m_launch->setExplanation(QString("The plan file does not work: ") + e.what());
    }
}

void MainWindow::maybePropose()
{
    if (!m_session->hasModel() || m_session->hasPlan() || m_proposing || m_session->launched())
        return;
    if (!m_options.plan.isEmpty())
        return;
    const auto ready = m_session->readyWorkers();
    if (ready.empty())
        return;
    // Local workers count as machines: the proposal waits until every one asked for has started and is ready.
    if (m_session->startingLocalWorkers())
        return;
    for (auto& a : m_session->localWorkers())
        if (std::find(ready.begin(), ready.end(), a) == ready.end())
            return;
    m_proposing = true;
    m_launch->setProposing(true);
    m_session->proposePlacement(m_launch->dtype(), m_launch->context());
}

uint64_t MainWindow::availableBytes() const
{
    uint64_t total = 0;
    for (auto& w : m_session->workers())
        if (w.state == WorkerState::Ready)
            total += w.maxMemoryBytes ? std::min(w.memoryFreeBytes, w.maxMemoryBytes) : w.memoryFreeBytes;
    return total;
}

void MainWindow::browseModels()
{
    auto* d = new ModelsDialog(m_settings.value("recentModels").toStringList(), m_launch->dtype(), availableBytes(), this);
    d->setAttribute(Qt::WA_DeleteOnClose);
    connect(d, &QDialog::accepted, this, [this, d] {
        if (!d->chosen().isEmpty())
            openModel(d->chosen());
    });
    d->open();
}

void MainWindow::showKeyDialog()
{
    auto* d = new KeyDialog(*m_session, this);
    d->setAttribute(Qt::WA_DeleteOnClose);
    d->open();
}

void MainWindow::saveSettingsFile()
{
    if (const QString why = m_settings.save(); !why.isEmpty())
        statusBar()->showMessage("the settings were not saved: " + why, 10000);
}

void MainWindow::saveSettings()
{
    Settings& settings = m_settings;
    settings.setValue("geometry", saveGeometry());
    settings.setValue("windowState", saveState());
    settings.setValue("dtype", m_launch->dtype());
    settings.setValue("context", static_cast<qlonglong>(m_launch->context()));
    settings.setValue("temperature", m_chat->temperatureBox()->value());
    settings.setValue("maxTokens", m_chat->maxTokensBox()->value());
    settings.setValue("keyFile", m_session->keyFile());
    saveSettingsFile();
}

void MainWindow::closeEvent(QCloseEvent* event)
{
    saveSettings();
    m_chat->save();
    QMainWindow::closeEvent(event);
}

} // namespace together::gui
