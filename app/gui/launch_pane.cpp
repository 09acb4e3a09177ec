// SPDX-License-Identifier: MIT
#include "gui/launch_pane.h"

#include "common/placements.h"
#include "gui/placement_board.h"
#include "session/app_session.h"
#include "session/theme.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFileInfo>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QMessageBox>
#include <QProgressBar>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>

namespace together::gui {

LaunchPane::LaunchPane(AppSession& session, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
{
    auto* layout = new QVBoxLayout(this);

    auto* modelRow = new QHBoxLayout;
    m_model = new QLabel("No model open");
    m_model->setTextInteractionFlags(Qt::TextSelectableByMouse);
    m_model->setWordWrap(true);
    auto* open = new QPushButton("Open model folder…");
    open->setAccessibleName("Open model folder…");
    auto* browse = new QPushButton("Models…");
    browse->setAccessibleName("Models…");
    modelRow->addWidget(m_model, 1);
    modelRow->addWidget(open);
    modelRow->addWidget(browse);
    layout->addLayout(modelRow);
    connect(open, &QPushButton::clicked, this, &LaunchPane::openModelRequested);
    connect(browse, &QPushButton::clicked, this, &LaunchPane::browseModelsRequested);

    m_prediction = new QLabel;
    QFont big = m_prediction->font();
    big.setPointSizeF(big.pointSizeF() * 1.3);
    big.setBold(true);
    m_prediction->setFont(big);
    m_prediction->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(m_prediction);
    m_explanation = new QLabel;
    m_explanation->setWordWrap(true);
    m_explanation->setTextInteractionFlags(Qt::TextSelectableByMouse);
    m_explanation->setStyleSheet("color:#555");
    layout->addWidget(m_explanation);

    m_board = new PlacementBoard(session);
    layout->addWidget(m_board);
    connect(m_board, &PlacementBoard::autoPlaceRequested, this, &LaunchPane::proposeRequested);
    connect(m_board, &PlacementBoard::dtypeFromPlan, this, &LaunchPane::setDtype);
    connect(&session, &AppSession::planChanged, this, [this] { refresh(); });
    connect(&session, &AppSession::workerUpdated, this, [this] { refresh(); }); // a machine of the plan became ready (or not)

    auto* options = new QHBoxLayout;
    m_dtype = new QComboBox;
    m_dtype->addItems({"bf16", "q8", "q4", "native", "f32"});
    m_dtype->setToolTip("bf16, q8, q4: the weights converted to that format when they load; native: each tensor in the "
                        "type the model file stores (a GGUF file's 4-, 5-, 6- or 8-bit blocks as they are); f32: widened");
    m_dtype->setAccessibleName("Dtype");
    auto* dl = new QLabel("Dtype");
    dl->setBuddy(m_dtype);
    m_context = new QSpinBox;
    m_context->setRange(0, 1 << 20);
    m_context->setSpecialValueText("model's own");
    m_context->setSingleStep(512);
    m_context->setValue(4096);
    m_context->setAccessibleName("Context length");
    auto* cl = new QLabel("Context");
    cl->setBuddy(m_context);
    options->addWidget(dl);
    options->addWidget(m_dtype);
    options->addWidget(cl);
    options->addWidget(m_context);
    m_failover = new QCheckBox("Fail over");
    m_failover->setAccessibleName("Fail over");
    m_failover->setToolTip("When a machine dies or stalls mid-answer, place the model over the others and go on");
    options->addWidget(m_failover);
    options->addStretch(1);
    auto options_changed = [this] {
        m_session.setPlanOptions(dtype(), context());
        m_board->setLaunchOptions(dtype(), context());
        refresh();
    };
    connect(m_dtype, &QComboBox::currentTextChanged, this, options_changed);
    connect(m_context, &QSpinBox::valueChanged, this, options_changed);

    m_launch = new QPushButton("Launch");
    m_launch->setAccessibleName("Launch");
    m_launch->setDefault(true);
    m_launch->setMinimumWidth(90);
    m_cancel = new QPushButton("Cancel");
    m_cancel->setAccessibleName("Cancel");
    m_unload = new QPushButton("Unload");
    m_unload->setAccessibleName("Unload");
    layout->addLayout(options);
    auto* buttons = new QHBoxLayout;
    buttons->addWidget(m_launch, 2);
    buttons->addWidget(m_cancel, 1);
    buttons->addWidget(m_unload, 1);
    layout->addLayout(buttons);
    connect(m_launch, &QPushButton::clicked, this, [this] { launch(false); });
    connect(m_cancel, &QPushButton::clicked, this, [this] {
        m_session.cancel();
        setStatus("cancelling…");
    });
    connect(m_unload, &QPushButton::clicked, this, [this] {
        m_session.unload();
        setStatus("unloading…");
    });

    m_progress = new QGroupBox("Launch progress");
    m_progressLayout = new QVBoxLayout(m_progress);
    m_progressLayout->setContentsMargins(6, 2, 6, 2);
    layout->addWidget(m_progress);
    m_progress->hide(); // shown while a launch runs
    m_status = new QLabel;
    m_status->setWordWrap(true);
    m_status->setTextInteractionFlags(Qt::TextSelectableByMouse | Qt::TextSelectableByKeyboard);
    layout->addWidget(m_status);
    layout->addStretch(1);
    m_session.setPlanOptions(dtype(), context());
    m_board->setLaunchOptions(dtype(), context());
    refresh();
}

QString LaunchPane::dtype() const { return m_dtype->currentText(); }
int64_t LaunchPane::context() const { return m_context->value(); }
void LaunchPane::setDtype(const QString& dtype)
{
    const int i = m_dtype->findText(dtype);
    if (i >= 0)
        m_dtype->setCurrentIndex(i);
}
void LaunchPane::setContext(int64_t context) { m_context->setValue(static_cast<int>(context)); }
QString LaunchPane::statusText() const { return m_status->text(); }

void LaunchPane::setStatus(const QString& text, bool error)
{
    m_status->setStyleSheet(error ? "color:" + statusColor(Status::Error).name() : QString());
    m_status->setText(text);
}

void LaunchPane::setExplanation(const QString& text)
{
    // Auto place's reasons hold for its proposal; once the board changes the plan they are hidden (Undo brings
    // both back).
    m_explained = m_session.plan().toJson();
    m_explainedText = text;
    m_explanation->setText(text);
    refresh();
}

void LaunchPane::setProposing(bool on)
{
    m_proposing = on;
    if (on)
        m_explainedText = "Measuring the machines and their links for a placement…";
    refresh();
}

void LaunchPane::controllerReset()
{
    if (m_launching)
        setStatus("the launch was abandoned: the model was closed");
    m_launching = false;
    for (auto* b : m_bars)
        b->parentWidget()->deleteLater();
    m_bars.clear();
    m_barLabels.clear();
    refresh();
}

void LaunchPane::refresh()
{
    if (m_session.hasModel()) {
        const auto& c = m_session.config();
        // The model's own limit caps the context (0 stands for it).
        if (c.contextLimit() > 0 && m_context->maximum() != static_cast<int>(std::min<int64_t>(c.contextLimit(), 1 << 20)))
            m_context->setMaximum(static_cast<int>(std::min<int64_t>(c.contextLimit(), 1 << 20)));
        // A folder named like "hf" or a snapshot hash says little: its parent's name goes first.
        QFileInfo dir(m_session.modelDir());
        QString name = dir.fileName();
        if (name.size() <= 3 || name.size() == 40)
            name = QFileInfo(dir.path()).fileName() + "/" + name;
        m_model->setText(QString("<b>%1</b> — %2 layers, hidden %3, %4")
                             .arg(name.toHtmlEscaped())
                             .arg(c.numLayers)
                             .arg(c.hiddenSize)
                             .arg(QString::fromStdString(c.architecture).toHtmlEscaped()));
    } else {
        m_model->setText("No model open");
    }
    if (m_session.hasPlan()) {
        m_prediction->setToolTip("Placement: " + QString::fromStdString(describePlan(m_session.plan())));
        if (auto& p = m_session.prediction())
            m_prediction->setText(QString("%1 ms/token · %2 tokens/s predicted").arg(p->msPerToken, 0, 'f', 1).arg(p->tokensPerSecond, 0, 'f', 1));
        else
            m_prediction->setText(m_session.predictionNote().isEmpty() ? QString() : "No prediction");
    } else {
        m_prediction->setText(m_session.hasModel() ? "No placement yet: it is proposed once workers are ready." : "No placement yet.");
        m_prediction->setToolTip({});
    }
    // Auto place's reasons hold for its proposal; after edits they stay (so nothing below moves) marked as such.
    const bool stale = !m_proposing && m_session.hasPlan() && !m_explainedText.isEmpty() && m_session.plan().toJson() != m_explained;
    m_explanation->setText(stale ? "Auto place proposed (before your edits; Undo returns to it): " + m_explainedText : m_explainedText);
    const bool busy = m_launching || m_proposing;
    m_board->setLocked(m_session.launched() || m_launching ? "unload the model to change where it runs" : m_proposing ? "measuring for Auto place…" : QString());
    const bool valid = m_session.planProblem(m_session.plan()).isEmpty();
    m_launch->setEnabled(m_session.hasModel() && m_session.hasPlan() && valid && !busy && m_busy.isEmpty() && !m_session.launched());
    m_launch->setToolTip(!m_busy.isEmpty() ? "Waits: " + m_busy
                         : valid           ? QString()
                                           : "The placement cannot be launched: " + m_session.planProblem(m_session.plan()));
    m_unload->setEnabled(m_session.launched() && !m_launching && m_busy.isEmpty());
    m_cancel->setEnabled(m_launching);
    m_dtype->setEnabled(!m_session.launched() && !m_launching);
    m_context->setEnabled(!m_session.launched() && !m_launching);
    m_failover->setEnabled(!m_session.launched() && !m_launching);
}

void LaunchPane::setBusy(const QString& why)
{
    m_busy = why;
    refresh();
}

void LaunchPane::launch(bool force)
{
    if (!m_busy.isEmpty())
        return;
    if (!force) {
        const QString shortfall = m_session.memoryShortfall(dtype(), context());
        if (!shortfall.isEmpty()) {
            warnMemory(shortfall);
            return;
        }
    }
    for (auto* b : m_bars)
        b->parentWidget()->deleteLater();
    m_bars.clear();
    m_barLabels.clear();
    try {
        m_session.launch(dtype(), context(), force, m_failover->isChecked());
    } catch (const std::exception& e) {
        setStatus(e.what(), true);
        return;
    }
    m_launching = true;
    m_forced = force;
    setStatus(force ? "launching beyond the free memory…" : "launching…");
    m_progress->show();
    refresh();
}

void LaunchPane::warnMemory(const QString& numbers)
{
    if (m_warning)
        return;
    m_warning = new QMessageBox(QMessageBox::Warning, "The placement may not fit",
                                numbers + "\n\nThe machine may swap or the shard may be killed. Launch anyway?", QMessageBox::Cancel, this);
    m_warning->setAttribute(Qt::WA_DeleteOnClose);
    QPushButton* anyway = m_warning->addButton("Launch anyway", QMessageBox::AcceptRole);
    anyway->setAccessibleName("Launch anyway");
    m_warning->setDefaultButton(QMessageBox::Cancel);
    connect(m_warning, &QMessageBox::finished, this, [this, anyway] {
        const bool go = m_warning->clickedButton() == anyway;
        m_warning = nullptr;
        if (go)
            launch(true);
        else
            setStatus("not launched: " + QString("the placement needs more memory than is free"), true);
    });
    m_warning->open();
}

void LaunchPane::onControllerEvent(const ControllerEvent& e)
{
    const bool stateChanges = e.kind == ControllerEvent::Kind::Launched || e.kind == ControllerEvent::Kind::LaunchFailed ||
                              e.kind == ControllerEvent::Kind::Unloaded || e.kind == ControllerEvent::Kind::Failed;
    struct RefreshBoard {
        PlacementBoard* board;
        bool on;
        ~RefreshBoard()
        {
            if (on)
                board->refresh(); // running or not: the board's check line says which
        }
    } refreshBoard{m_board, stateChanges};
    switch (e.kind) {
    case ControllerEvent::Kind::Progress: {
        const RankProgress& p = e.progress;
        while (m_bars.size() <= p.index) {
            auto* row = new QWidget;
            auto* l = new QVBoxLayout(row);
            l->setContentsMargins(0, 0, 0, 0);
            auto* label = new QLabel;
            auto* bar = new QProgressBar;
            bar->setRange(0, 1000);
            l->addWidget(label);
            l->addWidget(bar);
            m_progressLayout->addWidget(row);
            m_bars.push_back(bar);
            m_barLabels.push_back(label);
        }
        QProgressBar* bar = m_bars[p.index];
        const QString who = QString("stage %1 rank %2 on %3").arg(p.stage).arg(p.rank).arg(QString::fromStdString(p.worker));
        bar->setAccessibleName(who);
        QString text;
        double fraction = 0;
        switch (p.phase) {
        case RankProgress::Phase::Connecting:
            text = "connecting";
            break;
        case RankProgress::Phase::Transferring: {
            const double mib = 1024.0 * 1024.0;
            text = QString("transferring %1 of %2 MiB").arg(p.bytesDone / mib, 0, 'f', 0).arg(p.bytesTotal / mib, 0, 'f', 0);
            if (p.bytesPerSecond > 0) {
                text += QString(" at %1 MiB/s").arg(p.bytesPerSecond / mib, 0, 'f', 1);
                const double eta = (p.bytesTotal - p.bytesDone) / p.bytesPerSecond;
                text += QString(", %1 s left").arg(eta, 0, 'f', 0);
            }
            fraction = p.bytesTotal ? 0.8 * p.bytesDone / p.bytesTotal : 0;
            break;
        }
        case RankProgress::Phase::Loading:
            text = QString("loading layers %1/%2").arg(p.layersDone).arg(p.layersTotal);
            fraction = 0.8 + (p.layersTotal ? 0.2 * p.layersDone / p.layersTotal : 0);
            break;
        case RankProgress::Phase::Ready:
            text = "ready";
            fraction = 1;
            break;
        case RankProgress::Phase::FromCache:
            text = "from cache";
            fraction = 0.9;
            break;
        }
        m_barLabels[p.index]->setText(who + ": " + text);
        bar->setValue(static_cast<int>(fraction * 1000));
        bar->setFormat(text);
        break;
    }
    case ControllerEvent::Kind::Launched:
        m_launching = false;
        m_progress->hide(); // the bars stay (all "ready") for whoever reads them; the status line says it
        for (auto* b : m_bars)
            b->setValue(1000), b->setFormat("ready");
        setStatus("launched: " + QString::fromStdString(e.text));
        refresh();
        break;
    case ControllerEvent::Kind::LaunchFailed:
        m_launching = false;
        for (auto* b : m_bars) // nothing is left running: no bar stays at "connecting"
            if (b->value() < 1000)
                b->setFormat("not launched");
        setStatus("launch failed: " + QString::fromStdString(e.text), true);
        refresh();
        // The master's own check refused (free memory changed since): the same offer. A forced launch that a
        // worker still refuses (it holds to what it donates) just says why.
        if (!m_forced && e.text.find("needs about") != std::string::npos)
            warnMemory(QString::fromStdString(e.text));
        break;
    case ControllerEvent::Kind::Unloaded:
        m_launching = false;
        setStatus("unloaded: the workers' memory is free again");
        refresh();
        break;
    case ControllerEvent::Kind::Failed:
        setStatus("stopped: " + QString::fromStdString(e.text), true);
        refresh();
        break;
    default:
        break;
    }
}

} // namespace together::gui
