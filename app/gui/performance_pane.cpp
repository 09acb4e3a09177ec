// SPDX-License-Identifier: MIT
#include "gui/performance_pane.h"

#include "base/error.h"
#include "base/process.h"
#include "common/placements.h"
#include "session/app_session.h"
#include "session/theme.h"

#include <QCoreApplication>
#include <QCheckBox>
#include <QDateTime>
#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QProcess>
#include <QProgressBar>
#include <QPushButton>
#include <QRegularExpression>
#include <QSpinBox>
#include <QTableWidget>
#include <QTimer>
#include <QVBoxLayout>

#include <algorithm>
#include <set>

namespace together::gui {

namespace {
qint64 nowNs()
{
    static QElapsedTimer clock = [] {
        QElapsedTimer t;
        t.start();
        return t;
    }();
    return clock.nsecsElapsed();
}

QString writeText(const QString& path, const std::string& text)
{
    try {
        atomicWrite(path.toStdString(), text); // a failed write leaves the old file as it was
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}
} // namespace

PerformancePane::PerformancePane(AppSession& session, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
{
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(4, 4, 4, 4);
    auto* controls = new QHBoxLayout;
    auto spin = [&](const QString& label, int value, int max) {
        auto* l = new QLabel(label);
        auto* s = new QSpinBox;
        s->setRange(1, max);
        s->setValue(value);
        s->setAccessibleName(label);
        l->setBuddy(s);
        controls->addWidget(l);
        controls->addWidget(s);
        return s;
    };
    m_promptTokens = spin("Prompt tokens", 128, 100000);
    m_decodeTokens = spin("Decode tokens", 64, 100000);
    m_bench = new QPushButton("Bench");
    m_bench->setAccessibleName("Bench");
    m_bench->setToolTip("Measure the launched placement: the prompt, then greedy decode steps no end token stops");
    m_variantsBox = new QCheckBox("Variants");
    m_variantsBox->setAccessibleName("Bench variants");
    m_variantsBox->setToolTip("Also bench the placement's machines as one tensor-parallel group, as an even pipeline, and the "
                              "first of them alone; each is launched in turn and yours is launched again after");
    m_verifyButton = new QPushButton("Verify");
    m_verifyButton->setAccessibleName("Verify");
    m_verifyButton->setToolTip("Run the placement and the whole model on one machine for 16 greedy steps and compare the tokens "
                               "(a launched model is unloaded first: the check launches both itself)");
    m_export = new QPushButton("Export");
    m_export->setAccessibleName("Export");
    m_export->setToolTip("Write the table as CSV or Markdown (with the original together-LLM layout), or the charts as PNG");
    auto* clear = new QPushButton("Clear");
    clear->setAccessibleName("Clear runs");
    m_progress = new QProgressBar;
    m_progress->setAccessibleName("Bench progress");
    m_progress->setMaximumWidth(160);
    m_progress->hide();
    controls->addWidget(m_bench);
    controls->addWidget(m_variantsBox);
    controls->addWidget(m_progress);
    controls->addStretch(1);
    layout->addLayout(controls);
    // A second row: one long row would set the charts area's (and so the window's) minimum width.
    auto* more = new QHBoxLayout;
    more->addWidget(m_verifyButton);
    more->addStretch(1);
    more->addWidget(m_export);
    more->addWidget(clear);
    layout->addLayout(more);

    m_table = new QTableWidget(0, static_cast<int>(benchColumns().size()));
    m_table->setAccessibleName("Runs");
    QStringList headers;
    for (auto& c : benchColumns())
        headers << QString::fromStdString(c);
    m_table->setHorizontalHeaderLabels(headers);
    m_table->setEditTriggers(QAbstractItemView::NoEditTriggers);
    m_table->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_table->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    m_table->verticalHeader()->hide();
    layout->addWidget(m_table, 1);

    m_status = new QLabel;
    m_status->setWordWrap(true);
    m_status->setAccessibleDescription("The bench's progress and result"); // its name is its text, for screen readers
    m_status->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(m_status);
    m_verdict = new QLabel;
    m_verdict->setWordWrap(true);
    m_verdict->setAccessibleDescription("Verify's verdict"); // its name is its text
    m_verdict->setTextInteractionFlags(Qt::TextSelectableByMouse | Qt::TextSelectableByKeyboard);
    layout->addWidget(m_verdict);

    connect(m_bench, &QPushButton::clicked, this, &PerformancePane::bench);
    connect(m_verifyButton, &QPushButton::clicked, this, &PerformancePane::verify);
    connect(clear, &QPushButton::clicked, this, [this] {
        m_rows.clear();
        m_table->setRowCount(0);
    });
    connect(m_export, &QPushButton::clicked, this, [this] {
        QString filter;
        const QString path = QFileDialog::getSaveFileName(this, "Export", "together-runs.csv",
                                                          "CSV (*.csv);;Markdown (*.md);;Charts as PNG (*.png)", &filter);
        if (path.isEmpty())
            return;
        QString p = path;
        if (QFileInfo(p).suffix().isEmpty())
            p += filter.startsWith("Markdown") ? ".md" : filter.startsWith("Charts") ? ".png" : ".csv";
        const QString why = exportTo(p);
        m_status->setStyleSheet(why.isEmpty() ? QString() : "color:" + statusColor(Status::Error).name());
        m_status->setText(why.isEmpty() ? "Exported " + p : why);
    });
    connect(&m_session, &AppSession::controllerReset, this, [this] {
        if (benching())
            finishBench("the bench was abandoned: the model was closed", true);
        if (m_verifyAfterUnload) {
            m_verifyAfterUnload = false;
            m_verdict->setText("Verify was abandoned: the model was closed");
            Q_EMIT verifyRunning(false);
        }
    });
    refresh();
}

PerformancePane::~PerformancePane()
{
    if (m_verify) {
        // The window is closing: the check's own shards stop with its process (SIGTERM lets it stop them).
        m_verify->disconnect(this);
        m_verify->terminate();
        if (!m_verify->waitForFinished(5000))
            m_verify->kill();
        m_verify->waitForFinished(1000);
    }
}

void PerformancePane::refresh()
{
    const bool launched = m_session.launched();
    const QString busy = m_busy ? m_busy() : QString();
    m_bench->setEnabled(launched && !benching() && !verifying());
    m_bench->setToolTip(busy.isEmpty() ? "Measure the launched placement: the prompt, then greedy decode steps no end token stops"
                                       : "Waits: " + busy);
    m_verifyButton->setEnabled(m_session.hasModel() && m_session.planProblem(m_session.plan()).isEmpty() && !verifying() && !m_verifyAfterUnload &&
                               !benching());
    m_export->setEnabled(true);
}

QString PerformancePane::verdict() const { return m_verdict->text(); }

BenchRow PerformancePane::baseRow(const Plan& plan) const
{
    BenchRow r;
    r.model = benchModelName(m_session.modelDir().toStdString());
    setBenchPlacement(r, plan);
    r.dtype = plan.dtype;
    if (r.dtype.empty())
        if (Controller* c = m_session.controller())
            r.dtype = c->plan().dtype;
    for (auto& [w, bytes] : m_session.plannedBytes(plan, QString::fromStdString(r.dtype.empty() ? "bf16" : r.dtype), 0))
        r.estimateMiB = std::max(r.estimateMiB, static_cast<double>(bytes) / 1048576.0);
    if (auto p = m_session.predictPlan(plan)) {
        r.predicted = true;
        r.predictedMs = p->msPerToken;
    }
    return r;
}

void PerformancePane::addRow(const BenchRow& row)
{
    m_rows.push_back(row);
    BenchRow& r = m_rows.back();
    // Scaling against this session's first bench of the same model (chat replies differ in prompt and length:
    // they are not compared).
    auto base = std::find_if(m_rows.begin(), m_rows.end(), [&](const BenchRow& b) { return b.placement != "chat" && b.model == r.model; });
    r.efficiency = r.placement != "chat" && base != m_rows.end() && base->decodeTps > 0 && base->machines > 0
                       ? 100.0 * (r.decodeTps / base->decodeTps) / (static_cast<double>(r.machines) / base->machines)
                       : 0;
    m_table->setRowCount(static_cast<int>(m_rows.size()));
    showRow(m_rows.size() - 1);
    m_table->scrollToBottom();
}

void PerformancePane::showRow(size_t index)
{
    const auto cells = benchCells(m_rows[index]);
    for (size_t c = 0; c < cells.size(); ++c) {
        auto* item = m_table->item(static_cast<int>(index), static_cast<int>(c));
        if (!item) {
            item = new QTableWidgetItem;
            m_table->setItem(static_cast<int>(index), static_cast<int>(c), item);
        }
        item->setText(QString::fromStdString(cells[c]));
        if (c >= 2 && c + 1 < cells.size() && c != 5 && c != 6)
            item->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
    }
}

// The ranks' step records arrive just after the answer: read them a moment later (again, if they are late).
void PerformancePane::fillSplit(size_t index, int attempt)
{
    QTimer::singleShot(attempt == 0 ? 300 : 400, this, [this, index, attempt] {
        Controller* c = m_session.controller();
        if (!c || index >= m_rows.size())
            return;
        const auto all = c->records();
        uint64_t gen = 0;
        for (auto& s : all)
            gen = std::max(gen, s.generation);
        std::vector<StepRecord> steps;
        for (auto& s : all)
            if (s.generation == gen)
                steps.push_back(s);
        BenchRow& r = m_rows[index];
        if (steps.size() < static_cast<size_t>(std::max(1, r.decodeTokens)) && attempt < 3) {
            fillSplit(index, attempt + 1);
            return;
        }
        try {
            splitBenchSteps(steps, r);
            if (r.predicted && r.msPerToken > 0)
                r.errorPct = 100.0 * (r.predictedMs - r.msPerToken) / r.msPerToken;
        } catch (const std::exception&) {
        }
        for (auto& m : c->shardMemory())
            r.peakRssMiB = std::max(r.peakRssMiB, static_cast<double>(m.peakRssBytes) / 1048576.0);
        showRow(index);
    });
}

void PerformancePane::addChatRun(int promptTokens, int tokens, double ttftMs, double tokensPerSecond)
{
    if (tokens < 2)
        return;
    Controller* c = m_session.controller();
    BenchRow r = baseRow(c && m_session.launched() ? c->plan() : m_session.plan());
    r.placement = "chat";
    r.promptTokens = promptTokens;
    r.decodeTokens = tokens - 1;
    r.ttftMs = ttftMs;
    r.prefillTps = ttftMs > 0 ? promptTokens / (ttftMs / 1000.0) : 0;
    r.decodeTps = tokensPerSecond;
    addRow(r);
    fillSplit(m_rows.size() - 1, 0);
}

void PerformancePane::bench()
{
    if (!m_session.launched() || benching() || verifying())
        return;
    if (const QString busy = m_busy ? m_busy() : QString(); !busy.isEmpty()) {
        m_status->setStyleSheet("color:" + statusColor(Status::Error).name());
        m_status->setText("Not benched: " + busy + "; try again when it is done.");
        return;
    }
    Controller* c = m_session.controller();
    const Plan current = c ? c->plan() : m_session.plan();
    m_failures.clear();
    m_measured = 0;
    m_variants = {{"app bench", current}};
    if (m_variantsBox->isChecked())
        for (auto& v : variantsOf(current))
            m_variants.push_back(v);
    m_variant = 0;
    Q_EMIT benchRunning(true);
    m_progress->setRange(0, m_decodeTokens->value() + 1);
    m_progress->show();
    m_status->setStyleSheet({});
    refresh();
    startWarmUp();
}

std::vector<PerformancePane::Variant> PerformancePane::variantsOf(const Plan& current)
{
    std::vector<std::string> workers;
    for (auto& st : current.stages)
        for (auto& r : st.ranks)
            if (std::find(workers.begin(), workers.end(), r.worker) == workers.end())
                workers.push_back(r.worker);
    std::vector<Variant> out;
    if (workers.size() < 2)
        return out;
    int threads = 1 << 20;
    for (auto& w : workers)
        threads = std::min(threads, m_session.defaultThreads(w));
    const int n = static_cast<int>(workers.size());
    const std::pair<std::string, std::pair<int, int>> shapes[] = {
        {"variant: TP " + std::to_string(n), {n, 1}}, {"variant: PP " + std::to_string(n), {1, n}}, {"variant: " + workers.front() + " alone", {1, 1}}};
    for (auto& [label, shape] : shapes) {
        try {
            const std::vector<std::string> use(workers.begin(), workers.begin() + shape.first * shape.second);
            Plan p = Plan::even(m_session.config(), shape.first, shape.second, use, threads);
            p.dtype = current.dtype;
            p.validate(m_session.config());
            if (p.toJson() != current.toJson())
                out.push_back({label, p});
        } catch (const std::exception& e) {
            // Not a placement this model allows (heads or layers that do not split so): said, not run.
            m_failures << QString::fromStdString(label + ": " + e.what());
        }
    }
    return out;
}

void PerformancePane::startWarmUp()
{
    m_benchStage = BenchStage::WarmUp;
    ++m_benchRuns;
    m_progress->setValue(0);
    m_status->setText(QString("bench [%1/%2] %3: warming up…").arg(m_variant + 1).arg(m_variants.size()).arg(QString::fromStdString(m_variants[m_variant].label)));
    // Token ids spread over the vocabulary, different for each run (the shards keep a run's tokens: the next
    // run must not find its prompt already computed).
    const int vocab = static_cast<int>(std::max<int64_t>(2, m_session.config().vocabSize - 1));
    GenerateRequest warm;
    for (int i = 0; i < 8; ++i)
        warm.ids.push_back(1 + (i * 7919 + m_benchRuns * 31) % vocab);
    warm.params.maxTokens = 2;
    warm.sampling.temperature = 0;
    try {
        m_session.generate(warm);
    } catch (const std::exception& e) {
        finishBench(QString("bench: ") + e.what(), true);
    }
}

void PerformancePane::nextVariant()
{
    if (++m_variant < m_variants.size()) {
        m_benchStage = BenchStage::Launching;
        m_status->setText(QString("bench [%1/%2] %3: launching…").arg(m_variant + 1).arg(m_variants.size()).arg(QString::fromStdString(m_variants[m_variant].label)));
        try {
            m_session.launchPlan(m_variants[m_variant].plan);
        } catch (const std::exception& e) {
            m_failures << QString::fromStdString(m_variants[m_variant].label + ": " + e.what());
            nextVariant();
        }
        return;
    }
    if (m_variants.size() > 1) {
        m_benchStage = BenchStage::Relaunching;
        m_status->setText("bench: launching your placement again…");
        try {
            m_session.relaunch();
        } catch (const std::exception& e) {
            finishBench(QString("bench: cannot launch your placement again: ") + e.what(), true);
        }
        return;
    }
    const BenchRow& r = m_rows.back();
    finishBench(QString("bench: %1 decode tokens/s, first token after %2 ms").arg(r.decodeTps, 0, 'f', 2).arg(r.ttftMs, 0, 'f', 0), false);
}

void PerformancePane::onControllerEvent(const ControllerEvent& e)
{
    if (e.kind == ControllerEvent::Kind::Launched || e.kind == ControllerEvent::Kind::Unloaded || e.kind == ControllerEvent::Kind::LaunchFailed)
        refresh();
    // Unloaded, or failed with the shards gone anyway: verify now, from the event loop (not inside the
    // controller's event). Verify stays "running" until then, so nothing sees it finished in between.
    if (m_verifyAfterUnload && (e.kind == ControllerEvent::Kind::Unloaded || (e.kind == ControllerEvent::Kind::Failed && !m_session.launched())))
        QTimer::singleShot(0, this, &PerformancePane::resumeVerifyAfterUnload);
    if (!benching())
        return;
    switch (e.kind) {
    case ControllerEvent::Kind::Token:
        if (m_benchStage == BenchStage::Measure && e.token.token >= 0) {
            const qint64 now = nowNs();
            if (m_benchTokens == 0)
                m_firstTokenNs = now;
            m_lastTokenNs = now;
            ++m_benchTokens;
            m_progress->setValue(m_benchTokens);
        }
        break;
    case ControllerEvent::Kind::Ended:
        if (m_benchStage == BenchStage::WarmUp) {
            m_benchStage = BenchStage::Measure;
            const int vocab = static_cast<int>(std::max<int64_t>(2, m_session.config().vocabSize - 1));
            GenerateRequest run;
            for (int i = 0; i < m_promptTokens->value(); ++i)
                run.ids.push_back(1 + (i * 104729 + 17 + m_benchRuns * 613) % vocab);
            run.params.maxTokens = m_decodeTokens->value() + 1;
            run.sampling.temperature = 0;
            m_benchTokens = 0;
            m_status->setText(QString("bench: a prompt of %1 tokens, then %2 decode steps…").arg(run.ids.size()).arg(m_decodeTokens->value()));
            m_benchStartNs = nowNs();
            try {
                m_session.generate(run);
            } catch (const std::exception& ex) {
                finishBench(QString("bench: ") + ex.what(), true);
            }
        } else {
            BenchRow r = baseRow(m_variants[m_variant].plan);
            r.placement = m_variants[m_variant].label;
            r.promptTokens = m_promptTokens->value();
            r.decodeTokens = std::max(0, m_benchTokens - 1);
            r.ttftMs = (m_firstTokenNs - m_benchStartNs) / 1e6;
            r.prefillTps = r.ttftMs > 0 ? r.promptTokens / (r.ttftMs / 1000.0) : 0;
            const double secs = (m_lastTokenNs - m_firstTokenNs) / 1e9;
            r.decodeTps = secs > 0 ? r.decodeTokens / secs : 0;
            addRow(r);
            fillSplit(m_rows.size() - 1, 0);
            ++m_measured;
            nextVariant();
        }
        break;
    case ControllerEvent::Kind::Launched:
        if (m_benchStage == BenchStage::Launching)
            startWarmUp();
        else if (m_benchStage == BenchStage::Relaunching)
            finishBench(QString("bench: %1 placement(s) measured%2; yours is running again")
                            .arg(m_measured)
                            .arg(m_failures.isEmpty() ? QString() : ", not measured: " + m_failures.join("; ")),
                        false);
        break;
    case ControllerEvent::Kind::LaunchFailed:
        if (m_benchStage == BenchStage::Launching) {
            m_failures << QString::fromStdString(m_variants[m_variant].label + ": " + e.text);
            nextVariant();
        } else if (m_benchStage == BenchStage::Relaunching) {
            finishBench("bench: your placement could not be launched again: " + QString::fromStdString(e.text), true);
        }
        break;
    case ControllerEvent::Kind::Failed:
    case ControllerEvent::Kind::Unloaded:
        finishBench("bench stopped: " + QString::fromStdString(e.text), true);
        break;
    default:
        break;
    }
}

void PerformancePane::finishBench(const QString& message, bool error)
{
    m_benchStage = BenchStage::Idle;
    m_progress->hide();
    m_status->setStyleSheet(error ? "color:" + statusColor(Status::Error).name() : QString());
    m_status->setText(message);
    Q_EMIT benchRunning(false);
    refresh();
}

void PerformancePane::verify()
{
    if (verifying())
        return;
    const QString problem = m_session.planProblem(m_session.plan());
    if (!problem.isEmpty()) {
        m_verdict->setText("Cannot verify: " + problem);
        return;
    }
    // The check launches the placement and the reference itself: the machines' threads must be free.
    if (const QString busy = m_busy ? m_busy() : QString(); !busy.isEmpty()) {
        m_verdict->setText("Not verified: " + busy + "; try again when it is done.");
        return;
    }
    if (m_session.launched()) {
        m_verifyAfterUnload = true;
        Q_EMIT verifyRunning(true);
        m_verdict->setStyleSheet({});
        m_verdict->setText("Verifying: unloading the model first (the check launches the placement and a reference itself)…");
        m_session.unload();
        refresh();
        return;
    }
    // The check is the CLI's own (`together-cli verify`): the placement against the whole model on one of its
    // machines, greedy, the token ids and the logits compared.
    try {
        m_verifyDir = std::make_unique<TempDir>("verify");
    } catch (const std::exception& e) {
        verifyEnded(QString("Cannot verify: ") + e.what(), false);
        return;
    }
    m_verifyPlan = QString::fromStdString(m_verifyDir->path()) + "/plan.json";
    Plan plan = m_session.plan();
    if (Controller* c = m_session.controller(); c && m_session.launched() && !c->plan().dtype.empty())
        plan.dtype = c->plan().dtype;
    if (const QString why = writeText(m_verifyPlan, plan.toJson()); !why.isEmpty()) {
        verifyEnded("Cannot verify: " + why, false);
        return;
    }
    m_verify = new QProcess(this);
    m_verifyOutput.clear();
    QStringList args = {"verify", "--model", m_session.modelDir(), "--plan", m_verifyPlan, "--key-file", m_session.keyFile(), "--steps", "16"};
    m_verify->setProgram(QString::fromStdString(selfExecutableDir()) + "/together-cli");
    m_verify->setArguments(args);
    m_verdict->setStyleSheet({});
    m_verdict->setText("Verifying: running the placement and the reference on one machine…");
    connect(m_verify, &QProcess::readyReadStandardError, this, [this] {
        const QStringList lines = QString::fromUtf8(m_verify->readAllStandardError()).split('\n', Qt::SkipEmptyParts);
        if (!lines.isEmpty())
            m_verdict->setText("Verifying: " + lines.back().trimmed().remove(QRegularExpression("^together: ")));
        m_verifyOutput += lines.join('\n') + '\n';
    });
    connect(m_verify, &QProcess::finished, this, [this](int code, QProcess::ExitStatus status) {
        const QString out = QString::fromUtf8(m_verify->readAllStandardOutput());
        QString verdict;
        for (const QString& line : out.split('\n', Qt::SkipEmptyParts))
            if (line.startsWith("verdict:") || line.startsWith("token ids:") || line.startsWith("largest logit"))
                verdict += (verdict.isEmpty() ? "" : "\n") + line;
        const bool same = code == 0 && status == QProcess::NormalExit && out.contains("verdict: the placement gives the same tokens");
        if (verdict.isEmpty()) {
            const QStringList err = m_verifyOutput.split('\n', Qt::SkipEmptyParts);
            verdict = "Verify failed: " + (err.isEmpty() ? QString("together-cli verify exited with %1").arg(code) : err.back().trimmed());
        }
        verifyEnded(verdict, same);
    });
    connect(m_verify, &QProcess::errorOccurred, this, [this](QProcess::ProcessError e) {
        if (e == QProcess::FailedToStart) // no finished() follows
            verifyEnded("Verify failed: cannot start " + m_verify->program() + ": " + m_verify->errorString(), false);
    });
    Q_EMIT verifyRunning(true);
    m_verify->start();
    refresh();
}

void PerformancePane::resumeVerifyAfterUnload()
{
    if (!m_verifyAfterUnload)
        return; // already resumed, or abandoned (the model was closed)
    m_verifyAfterUnload = false;
    verify();
    if (!verifying()) {
        // Refused after all (the plan or the machines changed while unloading): the verdict says why, and Launch
        // no longer waits for it.
        Q_EMIT verifyRunning(false);
        refresh();
    }
}

void PerformancePane::verifyEnded(const QString& verdict, bool same)
{
    m_verdict->setStyleSheet("color:" + (same ? statusColor(Status::Ready).darker(130) : statusColor(Status::Error)).name());
    m_verdict->setText(verdict + (m_session.hasPlan() && !m_session.launched() ? "\nLaunch again to chat." : ""));
    if (m_verify) {
        m_verify->deleteLater();
        m_verify = nullptr;
    }
    m_verifyDir.reset();
    Q_EMIT verifyRunning(false);
    refresh();
}

QString PerformancePane::exportTo(const QString& path)
{
    const QString suffix = QFileInfo(path).suffix().toLower();
    if (suffix == "png") {
        if (!m_saveCharts)
            return "there are no charts to save";
        QString prefix = path;
        prefix.chop(4);
        return m_saveCharts(prefix);
    }
    if (suffix == "csv")
        return writeText(path, benchCsv(m_rows));
    if (suffix == "md" || suffix == "markdown") {
        std::vector<std::string> models;
        for (auto& r : m_rows)
            if (std::find(models.begin(), models.end(), r.model) == models.end())
                models.push_back(r.model);
        std::vector<std::string> failures;
        for (auto& f : m_failures)
            failures.push_back(f.toStdString());
        return writeText(path, benchMarkdown(m_rows, failures,
                                             "This session's runs in the app: \"chat\" rows are replies as typed (their prompt "
                                             "and length), \"app bench\" rows a fixed prompt and greedy decode steps no end token stops.",
                                             true, models));
    }
    return "export to .csv, .md or .png (not ." + suffix + ")";
}

} // namespace together::gui
