// SPDX-License-Identifier: MIT
// The app, driven through its real widgets (offscreen): two local workers and stories260K, launch, Complete
// mode at temperature 0 gives the reference continuation; stop mid-answer and continue; a worker killed
// mid-answer turns its row red and the chat says so with the text kept; a restart restores the conversation.
// The GUI thread's longest stall during a launch and a generation is measured (and bounded). Each test saves
// a screenshot under the build folder.
#include "base/error.h"
#include "gui/charts_pane.h"
#include "gui/chat_pane.h"
#include "gui/key_dialog.h"
#include "gui/launch_pane.h"
#include "gui/machines_pane.h"
#include "gui/main_window.h"
#include "gui/models_dialog.h"
#include "gui/performance_pane.h"
#include "gui/placement_board.h"
#include "gui/plan_edit.h"
#include "master/controller.h"
#include "model/gguf_model.h"
#include "model/model_config.h"
#include "net/cluster_key.h"
#include "session/app_session.h"
#include "session/settings.h"
#include "test_support.h"
#include "text/tokenizer.h"

#include <QApplication>
#include <QCheckBox>
#include <QDockWidget>
#include <QTabWidget>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QElapsedTimer>
#include <QDialogButtonBox>
#include <QBrush>
#include <QClipboard>
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QScrollBar>
#include <QTextBlock>
#include <QMessageBox>
#include <QMenu>
#include <QMimeData>
#include <QTableWidget>
#include <QToolButton>
#include <QUndoStack>
#include <QTreeWidget>
#include <QTreeWidgetItemIterator>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QSpinBox>
#include <QTableView>
#include <QTest>
#include <QTextBrowser>
#include <QTimer>

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>

using namespace together;
using namespace together::gui;
using nlohmann::json;

namespace {

std::string screenshotDir()
{
    const std::string d = std::string(TOGETHER_BIN_DIR) + "/../gui-screenshots";
    std::filesystem::create_directories(d);
    return d;
}

void screenshot(QWidget& w, const std::string& name)
{
    QApplication::processEvents();
    const std::string path = screenshotDir() + "/" + name + ".png";
    EXPECT_TRUE(w.grab().save(QString::fromStdString(path))) << path;
}

// Runs the event loop until `cond` holds or `ms` pass.
bool waitUntil(const std::function<bool()>& cond, int ms)
{
    QElapsedTimer t;
    t.start();
    while (!cond()) {
        if (t.elapsed() > ms)
            return false;
        QTest::qWait(20);
    }
    return true;
}

// How late a 5 ms timer fires on the GUI thread: the event loop's stalls.
struct StallMeter {
    QTimer timer;
    QElapsedTimer clock;
    qint64 last = 0;
    std::vector<double> lateMs;
    StallMeter()
    {
        timer.setInterval(5);
        timer.setTimerType(Qt::PreciseTimer);
        QObject::connect(&timer, &QTimer::timeout, [this] {
            const qint64 now = clock.nsecsElapsed();
            lateMs.push_back(std::max(0.0, (now - last) / 1e6 - 5.0));
            last = now;
        });
        clock.start();
        timer.start();
    }
    double max() const { return lateMs.empty() ? 0 : *std::max_element(lateMs.begin(), lateMs.end()); }
    double p99() const
    {
        if (lateMs.empty())
            return 0;
        auto v = lateMs;
        std::sort(v.begin(), v.end());
        return v[static_cast<size_t>(0.99 * (v.size() - 1))];
    }
};

struct App {
    std::unique_ptr<MainWindow> window;
    explicit App(const StartOptions& o)
    {
        window = std::make_unique<MainWindow>(o);
        window->resize(1280, 800);
        window->show();
    }
    AppSession& session() { return window->session(); }
    ChatPane& chat() { return window->chat(); }

    // Waits for the local workers, the model and the proposed placement.
    void waitForPlan()
    {
        ASSERT_TRUE(waitUntil([&] { return session().hasPlan() && session().hasModel(); }, 90000))
            << "no placement: " << window->launchPane().statusText().toStdString();
    }
    void launch()
    {
        ASSERT_TRUE(window->launchPane().launchButton()->isEnabled());
        QTest::mouseClick(window->launchPane().launchButton(), Qt::LeftButton);
        ASSERT_TRUE(waitUntil([&] { return session().launched(); }, 120000)) << window->launchPane().statusText().toStdString();
        ASSERT_TRUE(chat().sendButton()->isEnabled());
    }
    // Complete mode, greedy, `maxTokens`; types `prompt` into the Message field and presses Enter.
    void complete(const std::string& prompt, int maxTokens)
    {
        if (!chat().completeBox()->isChecked())
            QTest::mouseClick(chat().completeBox(), Qt::LeftButton);
        ASSERT_TRUE(chat().completeBox()->isChecked());
        chat().temperatureBox()->setValue(0);
        chat().maxTokensBox()->setValue(maxTokens);
        chat().input()->setFocus();
        QTest::keyClicks(chat().input(), QString::fromStdString(prompt));
        QTest::keyClick(chat().input(), Qt::Key_Return);
    }
    bool waitAnswer(int ms = 60000)
    {
        return waitUntil([&] { return !chat().generating(); }, ms);
    }
    const ChatMessage& lastAnswer()
    {
        const auto& m = chat().conversation().messages;
        for (auto it = m.rbegin(); it != m.rend(); ++it)
            if (it->role == ChatMessage::Role::Assistant)
                return *it;
        throw std::runtime_error("no answer");
    }
};

StartOptions storiesOptions()
{
    StartOptions o;
    o.model = QString::fromStdString(test::stories260KDir() + "/hf");
    o.localWorkers = 2;
    o.dtype = "f32";
    return o;
}



// The app's conversation file and settings live in the test's own config folder (see main()).

TEST(Gui, CompleteModeGivesTheReferenceContinuationWithoutStallingTheGuiThread)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    const auto& c = ref["cases"][0];
    const std::string expected = c["generated_text"];
    const int tokens = static_cast<int>(c["generated_ids"].size());

    StallMeter stalls;
    App app(storiesOptions());
    app.waitForPlan();
    screenshot(*app.window, "01-proposed");
    EXPECT_FALSE(app.window->banner()->isVisible()) << "a real model has no random-weights banner";
    EXPECT_EQ(app.window->machines().model().rowCount(), 2);
    ASSERT_NO_FATAL_FAILURE(app.launch());
    screenshot(*app.window, "02-launched");
    EXPECT_TRUE(app.chat().completeBox()->isChecked()) << "stories260K has no chat template: Complete is the default";
    ASSERT_NO_FATAL_FAILURE(app.complete(c["prompt"], tokens));
    ASSERT_TRUE(app.waitAnswer());
    screenshot(*app.window, "03-answered");
    const ChatMessage& answer = app.lastAnswer();
    EXPECT_EQ(answer.text.toStdString(), expected);
    EXPECT_EQ(answer.tokens, tokens);
    EXPECT_GT(answer.tokensPerSecond, 0);
    EXPECT_GE(answer.ttftMs, 0);
    EXPECT_NE(app.chat().transcriptText().toStdString().find(expected), std::string::npos)
        << "the transcript shows: " << app.chat().transcriptText().toStdString();
    EXPECT_NE(app.chat().transcriptText().toStdString().find("tokens/s"), std::string::npos) << "speed kept under the reply";
    // The charts receive the answer's steps (records arrive from the ranks while it runs, or just after).
    ASSERT_TRUE(waitUntil([&] { return app.window->charts().pointCount() >= static_cast<size_t>(tokens) / 2; }, 20000))
        << app.window->charts().pointCount() << " points";
    QTest::qWait(200); // a redraw
    screenshot(*app.window, "03b-charts");
    // The timeline exports as Chrome trace JSON (one row per rank) and the charts as PNG files.
    const std::string out = test::makeTempDir("gui-export");
    ASSERT_EQ(app.window->charts().exportTimeline(QString::fromStdString(out + "/timeline.json")).toStdString(), "");
    {
        std::ifstream in(out + "/timeline.json");
        const json trace = json::parse(in);
        const json& events = trace.is_array() ? trace : trace["traceEvents"];
        EXPECT_GT(events.size(), static_cast<size_t>(tokens)) << "no step events in the timeline";
    }
    ASSERT_EQ(app.window->charts().saveCharts(QString::fromStdString(out + "/charts")).toStdString(), "");
    // The in-app timeline: one row per rank, compute (and communication) spans of the last steps.
    app.window->charts().refreshTimeline();
    EXPECT_EQ(app.window->charts().timelineRows().size(), static_cast<qsizetype>(app.session().plan().rankCount()))
        << app.window->charts().timelineRows().join(", ").toStdString();
    EXPECT_GT(app.window->charts().timelineSpans(), 0);
    for (const char* f : {"/charts-tokens.png", "/charts-links.png", "/charts-time-per-token.png", "/charts-timeline.png"})
        EXPECT_GT(std::filesystem::file_size(out + f), 1000u) << f;

    std::printf("[ gui      ] event loop during start, launch and generation: longest stall %.1f ms, p99 %.1f ms over %zu ticks\n",
                stalls.max(), stalls.p99(), stalls.lateMs.size());
    // A bound that catches the GUI thread waiting on the network or a process (seconds), not a loaded machine's
    // scheduling (a CI run beside a build saw 280 ms); the numbers above are the measurement.
    EXPECT_LT(stalls.max(), 2000.0) << "the GUI thread waited";

    // Speed: the same greedy generation (200 tokens, right after a launch) in the app and through the CLI on
    // the same workers and placement, interleaved three times so that the machine's drift hits both; medians,
    // reported, not asserted.
    const int speedTokens = 200;
    const std::string plan = test::makeTempDir("gui-plan") + "/plan.json";
    std::ofstream(plan) << app.session().plan().toJson();
    std::vector<double> appTps, cliTps, appMs, cliMs;
    for (int round = 0; round < 3; ++round) {
        if (round > 0) {
            ASSERT_NO_FATAL_FAILURE(app.launch());
        }
        app.chat().newChat();
        ASSERT_NO_FATAL_FAILURE(app.complete(c["prompt"], speedTokens));
        ASSERT_TRUE(app.waitAnswer());
        {
            // The p50 of this answer's decode steps, as the controller recorded them (robust to this shared
            // machine's hiccups, which the mean tokens/s is not).
            Controller* ctl = app.session().controller();
            ctl->syncRecords();
            auto records = ctl->records();
            std::vector<double> steps;
            for (auto& r : records)
                if (r.generation == records.back().generation && r.step > 0)
                    steps.push_back(r.endToEndMs);
            std::sort(steps.begin(), steps.end());
            appMs.push_back(steps.empty() ? 0 : steps[steps.size() / 2]);
            appTps.push_back(app.lastAnswer().tokensPerSecond);
        }
        QTest::mouseClick(app.window->launchPane().unloadButton(), Qt::LeftButton);
        ASSERT_TRUE(waitUntil([&] { return !app.session().launched() && app.window->launchPane().launchButton()->isEnabled(); }, 30000));
        std::string out, err;
        const std::string cmd = test::cliBin() + " run --plan " + plan + " --key-file " + app.session().keyFile().toStdString() +
                                " --model " + test::stories260KDir() + "/hf --dtype f32 --temperature 0 --max-tokens " +
                                std::to_string(speedTokens) + " --prompt '" + c["prompt"].get<std::string>() + "'";
        ASSERT_EQ(test::runCommand(cmd, &out, &err), 0) << err;
        EXPECT_EQ(out, app.lastAnswer().text.toStdString()) << "the CLI and the app generate the same text";
        if (auto at = err.find("| decode "); at != std::string::npos) // the speed line: "... | decode N tokens/s | ..."
            cliTps.push_back(std::atof(err.c_str() + at + 9));
        if (auto at = err.find("steps): "); at != std::string::npos) // "per token (p50 of N steps): X ms = ..."
            cliMs.push_back(std::atof(err.c_str() + at + 8));
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0.0 : v[v.size() / 2];
    };
    std::printf("[ gui      ] decode over %d tokens after a launch, 3 runs each, interleaved: p50 ms/token app %.3f, CLI %.3f "
                "(app/CLI %.2f); mean tokens/s app %.1f, CLI %.1f (medians)\n",
                speedTokens, median(appMs), median(cliMs), median(cliMs) > 0 ? median(appMs) / median(cliMs) : 0.0, median(appTps),
                median(cliTps));
}

// A GGUF file opened as a person would from Ollama or LM Studio: llama.cpp's Q4_K_M file of stories260K. It runs
// native unless asked otherwise (its blocks as the file stores them), and the app's answer is the CLI's on the
// same placement.
TEST(Gui, AGgufFileOpensLaunchesAndAnswersAsTheCliDoes)
{
    const std::string gguf = test::sharedDir() + "/refmodels/gguf/stories260K-Q4_K_M.gguf";
    if (test::sharedDir().empty() || !std::ifstream(gguf))
        GTEST_SKIP() << gguf << " is not here";
    StartOptions o;
    o.model = QString::fromStdString(gguf);
    o.localWorkers = 2;
    App app(o);
    app.waitForPlan();
    EXPECT_EQ(app.window->launchPane().dtype().toStdString(), "native");
    EXPECT_NE(app.window->windowTitle().indexOf("stories260K-Q4_K_M.gguf"), -1) << app.window->windowTitle().toStdString();
    ASSERT_NO_FATAL_FAILURE(app.launch());
    ASSERT_NO_FATAL_FAILURE(app.complete("Once upon a time", 24));
    ASSERT_TRUE(app.waitAnswer());
    screenshot(*app.window, "17-gguf-answered");
    const std::string text = app.lastAnswer().text.toStdString();
    EXPECT_NE(text.find("Lily"), std::string::npos) << text; // the trained model's story, through its 4-bit weights
    const std::string plan = test::makeTempDir("gui-gguf-plan") + "/plan.json";
    std::ofstream(plan) << app.session().plan().toJson();
    QTest::mouseClick(app.window->launchPane().unloadButton(), Qt::LeftButton);
    ASSERT_TRUE(waitUntil([&] { return !app.session().launched() && app.window->launchPane().launchButton()->isEnabled(); }, 30000));
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --plan " + plan + " --key-file " + app.session().keyFile().toStdString() + " --model " +
                                   gguf + " --temperature 0 --max-tokens 24 --prompt 'Once upon a time'",
                               &out, &err),
              0)
        << err;
    EXPECT_EQ(out, text);
}

TEST(Gui, StopMidAnswerThenContinueGivesTheSameText)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    const auto& c = ref["cases"][0];
    const std::string expected = c["generated_text"];
    const int tokens = static_cast<int>(c["generated_ids"].size());
    App app(storiesOptions());
    app.waitForPlan();
    ASSERT_NO_FATAL_FAILURE(app.launch());
    app.chat().newChat();

    int seen = 0;
    auto conn = QObject::connect(&app.session(), &AppSession::controllerEvent, [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Token && e.token.token >= 0 && ++seen == 3)
            QTest::mouseClick(app.chat().stopButton(), Qt::LeftButton);
    });
    ASSERT_NO_FATAL_FAILURE(app.complete(c["prompt"], tokens));
    ASSERT_TRUE(app.waitAnswer());
    QObject::disconnect(conn);
    screenshot(*app.window, "04-stopped");
    {
        const ChatMessage& a = app.lastAnswer();
        EXPECT_EQ(a.end.toStdString(), "stopped");
        ASSERT_GE(a.tokens, 3);
        ASSERT_LT(a.tokens, tokens) << "the answer ended before Stop landed";
        EXPECT_EQ(expected.rfind(a.text.toStdString(), 0), 0u) << "the stopped answer is a prefix of the reference";
    }
    ASSERT_TRUE(app.chat().continueButton()->isEnabled());
    QTest::mouseClick(app.chat().continueButton(), Qt::LeftButton);
    ASSERT_TRUE(app.waitAnswer());
    screenshot(*app.window, "05-continued");
    // Continue gives the answer the whole budget again: the text goes on exactly where Stop left it.
    const ChatMessage& a = app.lastAnswer();
    EXPECT_EQ(a.text.toStdString().rfind(expected, 0), 0u) << a.text.toStdString();
    EXPECT_GT(a.tokens, tokens);
}

TEST(Gui, AWorkerKilledMidAnswerTurnsRedAndTheChatKeepsTheText)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    const auto& c = ref["cases"][0];
    const std::string expected = c["generated_text"];
    App app(storiesOptions());
    app.waitForPlan();
    ASSERT_NO_FATAL_FAILURE(app.launch());
    app.chat().newChat();
    const std::string victim = app.session().plan().stages.back().ranks.back().worker;
    const pid_t pid = app.session().localWorkerPid(victim);
    ASSERT_GT(pid, 0);

    int seen = 0;
    auto conn = QObject::connect(&app.session(), &AppSession::controllerEvent, [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Token && e.token.token >= 0 && ++seen == 3) {
            ::kill(pid, SIGKILL);
            // The person goes on typing their next message while the answer fails.
            QTest::keyClicks(app.chat().input(), "and then?");
        }
    });
    ASSERT_NO_FATAL_FAILURE(app.complete(c["prompt"], static_cast<int>(c["generated_ids"].size())));
    ASSERT_TRUE(app.waitAnswer(60000)) << "the failure was not noticed";
    QObject::disconnect(conn);
    auto& model = app.window->machines().model();
    const int row = model.rowOf(victim);
    ASSERT_GE(row, 0);
    ASSERT_TRUE(waitUntil([&] { return model.status(row) == Status::Error; }, 10000)) << model.stateText(row).toStdString();
    screenshot(*app.window, "06-worker-killed");
    const auto& msgs = app.chat().conversation().messages;
    ASSERT_GE(msgs.size(), 3u);
    EXPECT_EQ(msgs.back().role, ChatMessage::Role::Notice);
    EXPECT_TRUE(msgs.back().error);
    EXPECT_NE(msgs.back().text.toStdString().find(victim), std::string::npos) << msgs.back().text.toStdString();
    const ChatMessage& a = app.lastAnswer();
    EXPECT_EQ(a.end.toStdString(), "failed");
    EXPECT_GE(a.tokens, 3) << "the tokens received are kept";
    EXPECT_EQ(expected.rfind(a.text.toStdString(), 0), 0u) << a.text.toStdString();
    EXPECT_EQ(msgs[msgs.size() - 3].text.toStdString(), c["prompt"].get<std::string>()) << "the prompt is kept";
    EXPECT_EQ(app.chat().input()->toPlainText().toStdString(), "and then?") << "what the person was typing is kept";
    EXPECT_NE(app.chat().transcriptText().toStdString().find(victim), std::string::npos);
    EXPECT_NE(model.stateText(row).toStdString().find("error"), std::string::npos);
    EXPECT_FALSE(app.chat().sendButton()->isEnabled()) << "nothing to send to until a relaunch";
}

TEST(Gui, ARestartRestoresTheConversationAndTheSettings)
{
    const std::string model = test::writeTinyModel("gui-restart");
    std::vector<ChatMessage> before;
    {
        StartOptions o;
        o.model = QString::fromStdString(model);
        o.localWorkers = 1;
        o.dtype = "f32";
        App app(o);
        app.waitForPlan();
        ASSERT_NO_FATAL_FAILURE(app.launch());
        app.chat().newChat();
        if (app.chat().completeBox()->isChecked())
            QTest::mouseClick(app.chat().completeBox(), Qt::LeftButton); // the tiny model has a chat template
        app.chat().temperatureBox()->setValue(0.5);
        app.chat().maxTokensBox()->setValue(12);
        QTest::keyClicks(app.chat().input(), "Hello there");
        QTest::mouseClick(app.chat().sendButton(), Qt::LeftButton);
        ASSERT_TRUE(app.waitAnswer());
        before = app.chat().conversation().messages;
        ASSERT_EQ(before.size(), 2u);
        EXPECT_EQ(before[1].tokens, app.lastAnswer().tokens);
        app.window->close();
    }
    StartOptions o;
    o.model = QString::fromStdString(model);
    o.localWorkers = 1;
    App again(o);
    const auto& after = again.chat().conversation().messages;
    ASSERT_EQ(after.size(), before.size());
    for (size_t i = 0; i < after.size(); ++i) {
        EXPECT_EQ(after[i].text, before[i].text);
        EXPECT_EQ(after[i].ids, before[i].ids);
    }
    EXPECT_DOUBLE_EQ(again.chat().temperatureBox()->value(), 0.5);
    EXPECT_EQ(again.chat().maxTokensBox()->value(), 12);
    EXPECT_NE(again.chat().transcriptText().indexOf("Hello there"), -1);
    screenshot(*again.window, "07-restored");
}

TEST(Gui, TheBuiltInModelShowsTheRandomWeightsBannerAndTheKeyPaneShowsTheKey)
{
    {
        Settings settings; // a first start: no model used yet
        settings.remove("lastModel");
        settings.save();
    }
    StartOptions o;
    o.localWorkers = 1;
    App app(o);
    ASSERT_TRUE(waitUntil([&] { return app.session().hasModel(); }, 60000));
    EXPECT_TRUE(app.window->banner()->isVisible());
    EXPECT_EQ(app.window->banner()->accessibleName().toStdString(), "Random weights: output is noise");
    EXPECT_FALSE(app.session().keyText().isEmpty());
    EXPECT_EQ(std::filesystem::status(app.session().keyFile().toStdString()).permissions() & std::filesystem::perms::group_all,
              std::filesystem::perms::none);
    app.window->showKeyDialog();
    QApplication::processEvents();
    auto* key = app.window->findChild<KeyDialog*>();
    ASSERT_NE(key, nullptr);
    EXPECT_EQ(key->shownKey(), app.session().keyText());
    screenshot(*app.window, "08-builtin-model");
}

TEST(Gui, APlacementBeyondTheMemoryWarnsWithTheNumbersAndLaunchAnywayTries)
{
    const std::string model = test::writeTinyModel("gui-memory");
    StartOptions o;
    o.model = QString::fromStdString(model);
    o.localWorkers = 1;
    o.dtype = "f32";
    o.localWorkerArgs = {"--max-memory", "0.1"}; // donates 102 MiB: less than any shard needs
    App app(o);
    ASSERT_TRUE(waitUntil([&] { return app.session().hasModel() && app.session().readyWorkers().size() == 1; }, 60000));
    // The cost model finds nothing that fits; a placement set by hand is then checked at Launch.
    app.session().setPlan(Plan::even(app.session().config(), 1, 1, app.session().readyWorkers(), 1));
    LaunchPane& pane = app.window->launchPane();
    ASSERT_TRUE(waitUntil([&] { return pane.launchButton()->isEnabled(); }, 30000));
    QTest::mouseClick(pane.launchButton(), Qt::LeftButton);
    ASSERT_NE(pane.memoryWarning(), nullptr) << "no warning";
    const std::string text = pane.memoryWarning()->text().toStdString();
    EXPECT_NE(text.find("needs about"), std::string::npos) << text;
    EXPECT_NE(text.find("GiB donated"), std::string::npos) << text;
    screenshot(*pane.memoryWarning(), "09-memory-warning");
    QPushButton* anyway = nullptr;
    for (auto* b : pane.memoryWarning()->findChildren<QPushButton*>())
        if (b->text() == "Launch anyway")
            anyway = b;
    ASSERT_NE(anyway, nullptr);
    // Cancel first: nothing starts.
    pane.memoryWarning()->button(QMessageBox::Cancel)->click();
    ASSERT_TRUE(waitUntil([&] { return pane.memoryWarning() == nullptr; }, 5000));
    EXPECT_NE(pane.statusText().toStdString().find("not launched"), std::string::npos) << pane.statusText().toStdString();
    EXPECT_FALSE(app.session().launched());
    // Then Launch anyway: the master skips its free-memory check; this worker still holds to what it donates.
    QTest::mouseClick(pane.launchButton(), Qt::LeftButton);
    ASSERT_NE(pane.memoryWarning(), nullptr);
    for (auto* b : pane.memoryWarning()->findChildren<QPushButton*>())
        if (b->text() == "Launch anyway")
            b->click();
    ASSERT_TRUE(waitUntil([&] { return pane.statusText().startsWith("launch failed"); }, 60000)) << pane.statusText().toStdString();
    EXPECT_NE(pane.statusText().toStdString().find("donates"), std::string::npos) << pane.statusText().toStdString();
    EXPECT_EQ(pane.memoryWarning(), nullptr) << "a forced launch that fails is not offered again";
    EXPECT_FALSE(app.session().launched());
}

TEST(Gui, TheModelsListShowsTheHuggingFaceCacheAndWhyAModelCannotRun)
{
    // A hub cache with a runnable model and a quantized one.
    const std::string hub = std::getenv("HF_HUB_CACHE");
    const std::string good = hub + "/models--acme--Tiny-Chat/snapshots/0123456789abcdef0123456789abcdef01234567";
    const std::string bad = hub + "/models--acme--Tiny-AWQ/snapshots/89abcdef0123456789abcdef0123456789abcdef";
    for (auto* d : {&good, &bad}) {
        std::filesystem::create_directories(*d);
        std::filesystem::copy(test::writeTinyModel("gui-hub"), *d, std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing);
    }
    {
        std::ifstream in(bad + "/config.json");
        json cfg = json::parse(in);
        cfg["quantization_config"] = {{"quant_method", "awq"}};
        std::ofstream(bad + "/config.json") << cfg.dump();
    }
    // An Ollama store (OLLAMA_MODELS, see main()) with one model, a GGUF blob named by its manifest.
    const std::string ollama = std::getenv("OLLAMA_MODELS");
    const std::string digest(64, 'c');
    std::filesystem::create_directories(ollama + "/blobs");
    std::filesystem::create_directories(ollama + "/manifests/registry.ollama.ai/library/tiny");
    exportGguf(test::writeTinyModel("gui-ollama"), ollama + "/blobs/sha256-" + digest, GgmlType::Q8_0);
    std::ofstream(ollama + "/manifests/registry.ollama.ai/library/tiny/q8")
        << json{{"layers", {{{"mediaType", "application/vnd.ollama.image.model"}, {"digest", "sha256:" + digest}}}}}.dump();
    StartOptions o;
    o.localWorkers = 1;
    App app(o);
    app.window->browseModels();
    ModelsDialog* d = app.window->findChild<ModelsDialog*>();
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(waitUntil([&] { return !d->scanning(); }, 30000));
    QString all;
    for (QTreeWidgetItemIterator it(d->list()); *it; ++it)
        all += (*it)->text(0) + " | " + (*it)->text(2) + " | " + (*it)->text(3) + "\n";
    EXPECT_NE(all.indexOf("acme/Tiny-Chat | LlamaForCausalLM | yes"), -1) << all.toStdString();
    EXPECT_NE(all.indexOf("acme/Tiny-AWQ"), -1) << all.toStdString();
    EXPECT_NE(all.indexOf("no: "), -1) << all.toStdString();
    EXPECT_NE(all.indexOf("awq"), -1) << all.toStdString();
    EXPECT_NE(all.indexOf("Ollama (1)"), -1) << all.toStdString();
    EXPECT_NE(all.indexOf("tiny:q8 | LlamaForCausalLM | yes"), -1) << all.toStdString();
    d->resize(980, 300);
    QApplication::processEvents();
    EXPECT_TRUE(d->grab().save(QString::fromStdString(screenshotDir() + "/10-models.png")));
    // Opening the runnable one opens it in the app.
    for (QTreeWidgetItemIterator it(d->list()); *it; ++it)
        if ((*it)->text(0) == "acme/Tiny-Chat")
            d->list()->setCurrentItem(*it);
    for (auto* b : d->findChildren<QPushButton*>())
        if (b->text() == "Open")
            b->click();
    ASSERT_TRUE(waitUntil([&] { return app.session().modelDir().toStdString() == good; }, 30000)) << app.session().modelDir().toStdString();
}

// Clicks the link `href` in the transcript where it is drawn, as a person would.
bool clickLink(QTextBrowser* t, const QString& href)
{
    for (QTextBlock b = t->document()->begin(); b.isValid(); b = b.next())
        for (auto it = b.begin(); !it.atEnd(); ++it) {
            const QTextFragment f = it.fragment();
            if (!f.isValid() || f.charFormat().anchorHref() != href)
                continue;
            QTextCursor c(t->document());
            c.setPosition(f.position() + f.length() / 2);
            t->ensureCursorVisible();
            t->setTextCursor(c);
            const QRect r = t->cursorRect(c);
            QTest::mouseClick(t->viewport(), Qt::LeftButton, {}, r.center());
            return true;
        }
    return false;
}

TEST(Gui, ChatActionsAndAutoScrollThatPausesWhenTheUserScrollsUp)
{
    const std::string model = test::writeTinyModel("gui-actions");
    StartOptions o;
    o.model = QString::fromStdString(model);
    o.localWorkers = 1;
    o.dtype = "f32";
    App app(o);
    app.waitForPlan();
    ASSERT_NO_FATAL_FAILURE(app.launch());
    app.chat().newChat();
    ChatPane& chat = app.chat();
    EXPECT_FALSE(chat.completeBox()->isChecked()) << "a model with a chat template starts in chat mode";
    chat.temperatureBox()->setValue(0);
    chat.maxTokensBox()->setValue(40);
    for (const char* text : {"First question", "Second question", "Third question"}) {
        QTest::keyClicks(chat.input(), text);
        QTest::mouseClick(chat.sendButton(), Qt::LeftButton);
        ASSERT_TRUE(app.waitAnswer());
    }
    ASSERT_EQ(chat.conversation().messages.size(), 6u);

    // Copy puts the message on the clipboard; Delete removes it (clicked where the link is drawn).
    ASSERT_TRUE(clickLink(chat.transcript(), "act:copy:0"));
    EXPECT_EQ(QApplication::clipboard()->text().toStdString(), "First question");
    ASSERT_TRUE(clickLink(chat.transcript(), "act:delete:1"));
    ASSERT_EQ(chat.conversation().messages.size(), 5u);
    EXPECT_EQ(chat.conversation().messages[1].text.toStdString(), "Second question");

    // A long prompt shows the prefill progress until the first token.
    QProgressBar* prefill = nullptr;
    for (auto* b : chat.findChildren<QProgressBar*>())
        if (b->accessibleName() == "Reading the prompt")
            prefill = b;
    ASSERT_NE(prefill, nullptr);
    QString longText;
    for (int i = 0; i < 40; ++i)
        longText += "The quick brown fox jumps over the lazy dog. ";
    chat.input()->setPlainText(longText);
    QTest::mouseClick(chat.sendButton(), Qt::LeftButton);
    EXPECT_TRUE(prefill->isVisible()) << "no prefill progress on a long prompt";
    ASSERT_TRUE(app.waitAnswer());
    EXPECT_FALSE(prefill->isVisible());

    // Auto-scroll: a long answer follows the bottom, unless the person scrolls up while it streams.
    chat.maxTokensBox()->setValue(400);
    chat.transcript()->resize(chat.transcript()->width(), 120); // a short view, so the answer overflows it
    bool scrolled = false;
    auto conn = QObject::connect(&app.session(), &AppSession::controllerEvent, [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Token && !scrolled && chat.transcript()->verticalScrollBar()->maximum() > 0) {
            chat.transcript()->verticalScrollBar()->setValue(0); // the person scrolls up to read
            scrolled = true;
        }
    });
    QTest::keyClicks(chat.input(), "Tell me a long story");
    QTest::keyClick(chat.input(), Qt::Key_Return);
    ASSERT_TRUE(app.waitAnswer());
    QObject::disconnect(conn);
    if (scrolled)
        EXPECT_EQ(chat.transcript()->verticalScrollBar()->value(), 0) << "the view jumped back to the bottom";
    else
        std::printf("[ gui      ] the answer never overflowed the view; auto-scroll pause not exercised\n");
    // Regenerate replaces the last answer (greedy: the same text).
    const QString before = chat.conversation().messages.back().text;
    QTest::mouseClick(chat.regenerateButton(), Qt::LeftButton);
    ASSERT_TRUE(app.waitAnswer());
    EXPECT_EQ(chat.conversation().messages.back().text, before);
    EXPECT_EQ(chat.conversation().messages.size(), 9u);
    screenshot(*app.window, "11-chat-actions");
}

TEST(Gui, AFirstStartWithoutWorkersOffersLocalOnesAndAddByAddressShowsWhyAWorkerIsUnreachable)
{
    const std::string model = test::writeTinyModel("gui-first");
    StartOptions o;
    o.model = QString::fromStdString(model);
    o.broadcast = false; // no beacons outside a namespace: the LAN is empty here
    App app(o);
    QPushButton* start = nullptr;
    for (auto* b : app.window->findChildren<QPushButton*>())
        if (b->accessibleName() == "Start local workers")
            start = b;
    ASSERT_NE(start, nullptr);
    ASSERT_TRUE(waitUntil([&] { return start->isVisible(); }, 15000)) << "no offer of local workers";
    screenshot(*app.window, "12-first-start");
    QTest::mouseClick(start, Qt::LeftButton);
    ASSERT_TRUE(waitUntil([&] { return app.session().hasPlan(); }, 90000)) << "no placement over the local workers";
    EXPECT_EQ(app.window->machines().model().rowCount(), 2);

    // Each machine's recent log, in the app.
    app.window->machines().table()->selectRow(0);
    QPushButton* logButton = nullptr;
    for (auto* b : app.window->machines().findChildren<QPushButton*>())
        if (b->text() == "Log…")
            logButton = b;
    ASSERT_NE(logButton, nullptr);
    ASSERT_TRUE(logButton->isEnabled());
    QTest::mouseClick(logButton, Qt::LeftButton);
    QPlainTextEdit* log = nullptr;
    ASSERT_TRUE(waitUntil([&] {
        for (auto* e : app.window->findChildren<QPlainTextEdit*>())
            if (e->accessibleName() == "Log")
                log = e;
        return log && log->toPlainText() != "reading the log…";
    }, 15000));
    EXPECT_FALSE(log->toPlainText().startsWith("cannot")) << log->toPlainText().toStdString();
    EXPECT_NE(log->toPlainText().indexOf("serving on"), -1) << log->toPlainText().toStdString();
    log->window()->grab().save(QString::fromStdString(screenshotDir() + "/12b-worker-log.png"));
    log->window()->close();

    QLineEdit* address = nullptr;
    for (auto* e : app.window->machines().findChildren<QLineEdit*>())
        if (e->accessibleName() == "Address")
            address = e;
    ASSERT_NE(address, nullptr);
    QTest::keyClicks(address, "127.0.0.1:1");
    QTest::keyClick(address, Qt::Key_Return);
    auto& model3 = app.window->machines().model();
    ASSERT_TRUE(waitUntil([&] { return model3.rowOf("127.0.0.1:1") >= 0 && model3.status(model3.rowOf("127.0.0.1:1")) == Status::Error; }, 20000));
    const QString state = model3.stateText(model3.rowOf("127.0.0.1:1"));
    EXPECT_TRUE(state.startsWith("unreachable")) << state.toStdString();
    const QModelIndex stateCell = model3.index(model3.rowOf("127.0.0.1:1"), MachinesModel::State);
    EXPECT_EQ(model3.data(stateCell, Qt::ForegroundRole).value<QBrush>().color(), statusColor(Status::Error));
    EXPECT_NE(state.indexOf("7600") + state.indexOf(":1"), -2) << state.toStdString();
    screenshot(app.window->machines(), "13a-unreachable-unselected");
    // Selecting the row shows its state as text that can be copied.
    app.window->machines().table()->selectRow(model3.rowOf("127.0.0.1:1"));
    EXPECT_NE(app.window->machines().selectedDetails().indexOf("unreachable"), -1);
    screenshot(*app.window, "13-unreachable");
    forgetWorker("127.0.0.1:1");
}

TEST(Gui, WithFailOverAWorkerKilledMidAnswerLeavesANoticeAndTheAnswerGoesOnExactly)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    const auto& c = ref["cases"][0];
    const std::string expected = c["generated_text"];
    const int tokens = static_cast<int>(c["generated_ids"].size());
    App app(storiesOptions());
    app.waitForPlan();
    QTest::mouseClick(app.window->launchPane().failoverBox(), Qt::LeftButton);
    ASSERT_TRUE(app.window->launchPane().failoverBox()->isChecked());
    ASSERT_NO_FATAL_FAILURE(app.launch());
    app.chat().newChat();
    const std::string victim = app.session().plan().stages.front().ranks.front().worker;
    const pid_t pid = app.session().localWorkerPid(victim);
    ASSERT_GT(pid, 0);
    int seen = 0;
    auto conn = QObject::connect(&app.session(), &AppSession::controllerEvent, [&](const ControllerEvent& e) {
        if (e.kind == ControllerEvent::Kind::Token && e.token.token >= 0 && ++seen == 3)
            ::kill(pid, SIGKILL);
    });
    ASSERT_NO_FATAL_FAILURE(app.complete(c["prompt"], tokens));
    ASSERT_TRUE(app.waitAnswer(120000));
    QObject::disconnect(conn);
    screenshot(*app.window, "14-failover");
    const auto& msgs = app.chat().conversation().messages;
    bool notice = false;
    for (auto& m : msgs)
        if (m.role == ChatMessage::Role::Notice && !m.error)
            notice = true;
    QString all;
    for (auto& m : msgs)
        all += m.text + "\n";
    EXPECT_TRUE(notice) << "no failover notice in the chat:\n" << all.toStdString();
    const ChatMessage& a = app.lastAnswer();
    EXPECT_EQ(a.text.toStdString(), expected) << "the answer went on from where it was";
    EXPECT_TRUE(app.session().launched());
    auto& model = app.window->machines().model();
    EXPECT_EQ(model.status(model.rowOf(victim)), Status::Error) << model.stateText(model.rowOf(victim)).toStdString();
    EXPECT_EQ(app.session().plan().stages.front().ranks.front().worker.find(victim), std::string::npos) << "the placement shown is the new one";
}

TEST(Gui, LocalWorkersOutliveTheThreadThatStartedThem)
{
    // They are spawned on a pool thread and die with it (PR_SET_PDEATHSIG follows the thread): an idle pool
    // thread that expired after 30 s took every local worker with it.
    StartOptions o;
    o.model = QString::fromStdString(test::writeTinyModel("gui-idle"));
    o.localWorkers = 2;
    App app(o);
    ASSERT_TRUE(waitUntil([&] { return app.session().localWorkers().size() == 2; }, 60000));
    QTest::qWait(40000); // longer than QThreadPool's default expiry
    for (auto& a : app.session().localWorkers())
        EXPECT_EQ(::kill(app.session().localWorkerPid(a), 0), 0) << a << " is gone";
    for (auto& w : app.session().workers())
        EXPECT_EQ(w.state, WorkerState::Ready) << w.address << ": " << w.reason;
}

TEST(Gui, AnUnreadableConversationsFileIsKeptAsideAndForeignTokenIdsAreNotFed)
{
    const std::string model = test::writeTinyModel("gui-hostile");
    const QString path = ConversationStore::defaultPath();
    {
        QFile f(path);
        ASSERT_TRUE(f.open(QIODevice::WriteOnly | QIODevice::Truncate));
        f.write("{\"conversations\": [{\"messages\": [");
    }
    {
        StartOptions o;
        o.model = QString::fromStdString(model);
        o.localWorkers = 1;
        App app(o);
        ASSERT_EQ(app.chat().conversation().messages.size(), 0u);
        const QStringList aside = QFileInfo(path).dir().entryList({"conversations.json.unreadable-*"});
        ASSERT_EQ(aside.size(), 1) << "the unreadable file was not kept";
        QFile kept(QFileInfo(path).dir().filePath(aside.first()));
        ASSERT_TRUE(kept.open(QIODevice::ReadOnly));
        EXPECT_EQ(kept.readAll().toStdString(), "{\"conversations\": [{\"messages\": [");
        QFile::remove(kept.fileName());
        app.window->close();
    }
    // Ids that are not this model's tokens (another model's file, an edit) are not fed: the text is encoded.
    auto tokenizer = Tokenizer::fromDirectory(model);
    Conversation c;
    c.complete = true;
    ChatMessage user;
    user.text = "Hello";
    ChatMessage reply;
    reply.role = ChatMessage::Role::Assistant;
    reply.text = " world";
    reply.ids = {-5, tokenizer.vocabSize() + 7};
    c.messages = {user, reply};
    auto ids = promptIds(c, tokenizer, true);
    auto expected = tokenizer.encode("Hello", true);
    auto tail = tokenizer.encode(" world", false);
    expected.insert(expected.end(), tail.begin(), tail.end());
    EXPECT_EQ(ids, expected);
    for (int id : ids)
        EXPECT_TRUE(id >= 0 && id < tokenizer.vocabSize());
    const QJsonObject hostile{{"messages", QJsonArray{QJsonObject{{"role", "assistant"}, {"text", "x"}, {"ids", QJsonArray{1, "2", 3.5}}}}}};
    EXPECT_TRUE(Conversation::fromJson(hostile).messages[0].ids.empty()) << "non-integer ids are dropped";
}

TEST(Gui, ANewKeyKeepsTheOldOneAsideAndBringsTheLocalWorkersBackUnderIt)
{
    StartOptions o;
    o.model = QString::fromStdString(test::writeTinyModel("gui-newkey"));
    o.localWorkers = 1;
    o.dtype = "f32";
    App app(o);
    app.waitForPlan();
    const std::string file = app.session().keyFile().toStdString();
    const QString before = app.session().keyText();
    const auto oldWorkers = app.session().localWorkers();
    app.session().replaceKey();
    EXPECT_NE(app.session().keyText(), before);
    EXPECT_EQ(QString::fromStdString(ClusterKey::fromFile(file).text()), app.session().keyText());
    EXPECT_EQ(QString::fromStdString(ClusterKey::fromFile(file + ".old").text()), before) << "the old key is kept aside";
    EXPECT_FALSE(app.session().hasPlan()) << "the placement named the old local workers";
    // The local workers come back under the new key, the list shows only them, and a launch works.
    ASSERT_TRUE(waitUntil([&] {
        const auto now = app.session().localWorkers();
        return app.session().hasPlan() && now.size() == 1 && now != oldWorkers;
    }, 90000));
    EXPECT_EQ(app.window->machines().model().rowCount(), 1);
    ASSERT_NO_FATAL_FAILURE(app.launch());
}

} // namespace

// ---- the placement board ----

// A drag as Qt delivers it to the board: enter and move over the target point, then the drop, each carrying
// the mime data the drag source made. Returns whether the board accepted the drop.
bool dropOn(BoardCanvas& canvas, QMimeData* mime, QPoint at)
{
    std::unique_ptr<QMimeData> owned(mime);
    QDragEnterEvent enter(at, Qt::MoveAction, mime, Qt::LeftButton, Qt::NoModifier);
    QApplication::sendEvent(&canvas, &enter);
    if (!enter.isAccepted())
        return false;
    QDragMoveEvent move(at, Qt::MoveAction, mime, Qt::LeftButton, Qt::NoModifier);
    QApplication::sendEvent(&canvas, &move);
    QDropEvent drop(QPointF(at), Qt::MoveAction, mime, Qt::LeftButton, Qt::NoModifier);
    QApplication::sendEvent(&canvas, &drop);
    QApplication::processEvents();
    return move.isAccepted() && drop.isAccepted();
}

QPoint laneCentre(BoardCanvas& canvas, const std::string& address)
{
    Lane* l = canvas.lane(address);
    EXPECT_NE(l, nullptr) << "no lane " << address;
    return l ? QPoint(canvas.columnX(canvas.layers() / 2), l->geometry().center().y()) : QPoint();
}

QPoint blockCentre(BoardCanvas& canvas, int64_t layer)
{
    LayerBlock* b = canvas.block(layer);
    EXPECT_NE(b, nullptr);
    return b ? b->geometry().center() : QPoint();
}

std::string workerOf(const Plan& plan, int64_t layer, size_t rank = 0)
{
    for (auto& st : plan.stages)
        if (st.firstLayer <= layer && layer <= st.lastLayer)
            return rank < st.ranks.size() ? st.ranks[rank].worker : "";
    return "";
}

// Picks `text` in the popup menu that `open` shows (a QMenu runs its own event loop), with the keyboard.
void pickFromMenu(const std::function<void()>& open, const QString& text, bool* found)
{
    *found = false;
    QTimer::singleShot(300, [text, found] {
        auto* menu = qobject_cast<QMenu*>(QApplication::activePopupWidget());
        if (!menu)
            return;
        for (QAction* a : menu->actions())
            if (a->text().startsWith(text) && a->isEnabled()) {
                *found = true;
                menu->setActiveAction(a);
                QTest::keyClick(menu, Qt::Key_Return);
                return;
            }
        menu->close();
    });
    open();
    QApplication::processEvents();
}

// The board's edits as pure functions: a layer moved away and back joins its stage again with the machine's own
// settings; removing a rank keeps every layer even when the stages are listed out of order.
TEST(PlanEdit, MovesKeepAMachinesSettingsAndRemovalsKeepEveryLayer)
{
    Plan p;
    p.stages.push_back(PlanStage{0, 4, {PlanRank{"a:1", 3, "/models/m"}}});
    Plan moved = assignLayers(p, 5, {2}, PlanRank{"b:1", 1, {}});
    ASSERT_EQ(moved.stages.size(), 3u) << moved.toJson();
    EXPECT_EQ(moved.stages[1].ranks[0].worker, "b:1");
    Plan back = assignLayers(moved, 5, {2}, PlanRank{"a:1", 1, {}});
    ASSERT_EQ(back.stages.size(), 1u) << back.toJson();
    EXPECT_EQ(back.stages[0].ranks[0].threads, 3);
    EXPECT_EQ(back.stages[0].ranks[0].modelDir, "/models/m");
    EXPECT_THROW(assignLayers(p, 5, {5}, PlanRank{"b:1", 1, {}}), Error);

    Plan tp = addRank(back, 0, PlanRank{"c:1", 2, {}});
    EXPECT_EQ(tp.stages[0].ranks.size(), 2u);
    EXPECT_THROW(addRank(tp, 0, PlanRank{"c:1", 2, {}}), Error);
    EXPECT_THROW(removeRank(back, 5, 0, "a:1"), Error) << "a stage's only machine cannot leave it";

    Plan shuffled; // as a table may hold it: the later layers first
    shuffled.stages.push_back(PlanStage{3, 4, {PlanRank{"a:1", 1, {}}}});
    shuffled.stages.push_back(PlanStage{0, 2, {PlanRank{"b:1", 1, {}}, PlanRank{"c:1", 1, {}}}});
    Plan removed = removeRank(shuffled, 5, 1, "c:1");
    ASSERT_EQ(removed.stages.size(), 2u) << removed.toJson();
    EXPECT_EQ(removed.stages[0].lastLayer, 2);
    EXPECT_EQ(removed.stages[1].ranks[0].worker, "a:1");
}

StartOptions storiesOnThree()
{
    StartOptions o = storiesOptions();
    o.localWorkers = 3;
    return o;
}

TEST(Gui, ThePlacementBoardMovesLayersAddsRanksRefusesBadDropsAndUndoes)
{
    SKIP_WITHOUT_STORIES();
    App app(storiesOnThree());
    app.waitForPlan();
    ASSERT_TRUE(waitUntil([&] { return app.session().readyWorkers().size() == 3 && app.session().prediction().has_value(); }, 60000));
    PlacementBoard& board = *app.window->launchPane().board();
    BoardCanvas& canvas = *board.canvas();
    QApplication::processEvents();
    const int64_t layers = app.session().config().numLayers;
    ASSERT_EQ(canvas.layers(), layers);
    ASSERT_EQ(canvas.lanes().size(), 3u);
    for (int64_t l = 0; l < layers; ++l) {
        ASSERT_NE(canvas.block(l), nullptr);
        EXPECT_EQ(canvas.block(l)->accessibleName().toStdString(), "Layer " + std::to_string(l));
        EXPECT_TRUE(canvas.block(l)->isVisible());
    }
    for (auto* lane : canvas.lanes())
        EXPECT_EQ(lane->accessibleName().toStdString(), lane->info().address) << "a lane is named by its address";
    screenshot(*app.window, "10-board-proposed");

    // Make the start known: everything on the first machine (through the table, the board's equal second way).
    const auto workers = app.session().readyWorkers();
    const std::string a = workers[0], b = workers[1], c = workers[2];
    canvas.assignTo([&] { std::vector<int64_t> all; for (int64_t l = 0; l < layers; ++l) all.push_back(l); return all; }(), a);
    ASSERT_EQ(app.session().plan().stages.size(), 1u);
    ASSERT_EQ(workerOf(app.session().plan(), layers - 1), a);
    ASSERT_TRUE(app.session().prediction().has_value());
    const double onOne = app.session().prediction()->msPerToken;
    const std::string start = app.session().plan().toJson();

    // 1. Drag the last layer onto b's lane: two pipeline stages, and a prediction with a link in it.
    const QMimeData* probe = BoardCanvas::layersMime(canvas.dragLayersFor(layers - 1));
    EXPECT_TRUE(probe->hasFormat("application/x-together-layers"));
    EXPECT_FALSE(probe->hasText()) << "a layer dropped on a text field pastes nothing";
    delete probe;
    ASSERT_TRUE(dropOn(canvas, BoardCanvas::layersMime(canvas.dragLayersFor(layers - 1)), laneCentre(canvas, b))) << board.lastMessage().toStdString();
    Plan p = app.session().plan();
    ASSERT_EQ(p.stages.size(), 2u) << p.toJson();
    EXPECT_EQ(p.stages[1].firstLayer, layers - 1);
    EXPECT_EQ(workerOf(p, layers - 1), b);
    ASSERT_TRUE(app.session().prediction().has_value()) << app.session().predictionNote().toStdString();
    EXPECT_EQ(app.session().prediction()->stages.size(), 2u);
    EXPECT_NE(app.session().prediction()->msPerToken, onOne);
    EXPECT_GT(app.session().prediction()->linkMs(), 0.0) << "two stages pass the activations over a link";
    EXPECT_EQ(canvas.block(layers - 1)->geometry().center().y(), canvas.lane(b)->geometry().center().y()) << "the block sits in b's lane";
    EXPECT_NE(board.checkText().toStdString().find("Valid: 2 stages"), std::string::npos) << board.checkText().toStdString();
    screenshot(*app.window, "11-board-dragged");

    // 2. Drag machine c onto stage 0: a tensor-parallel rank.
    ASSERT_TRUE(dropOn(canvas, BoardCanvas::workerMime(c), blockCentre(canvas, 0))) << board.lastMessage().toStdString();
    p = app.session().plan();
    ASSERT_EQ(p.stages[0].ranks.size(), 2u) << p.toJson();
    EXPECT_EQ(p.stages[0].ranks[1].worker, c);
    ASSERT_TRUE(app.session().prediction().has_value());
    EXPECT_GT(app.session().prediction()->stages[0].allReduces, 0) << "a TP stage all-reduces";
    const std::string withTp = p.toJson();
    // Dragging c's hatched share off the stage takes the rank out; undo puts it back.
    ASSERT_TRUE(dropOn(canvas, BoardCanvas::rankMime(c, 0), laneCentre(canvas, b))) << board.lastMessage().toStdString();
    EXPECT_EQ(app.session().plan().stages[0].ranks.size(), 1u);
    board.undoStack()->undo();
    EXPECT_EQ(app.session().plan().toJson(), withTp);

    // 3. An invalid drop: b as a third rank of stage 0 (stories260K's 8 heads and 4 KV heads do not split 3
    // ways) is refused with the reason, and nothing changes.
    ASSERT_FALSE(dropOn(canvas, BoardCanvas::workerMime(b), blockCentre(canvas, 0)));
    EXPECT_EQ(app.session().plan().toJson(), withTp);
    EXPECT_NE(board.lastMessage().toStdString().find("Not moved"), std::string::npos) << board.lastMessage().toStdString();
    EXPECT_NE(board.lastMessage().toStdString().find("does not divide the 8 attention heads"), std::string::npos) << board.lastMessage().toStdString();
    // ... and so is the same machine twice in one stage, and layers dropped beside the lanes.
    ASSERT_FALSE(dropOn(canvas, BoardCanvas::workerMime(c), blockCentre(canvas, 0)));
    EXPECT_NE(board.lastMessage().toStdString().find("already runs stage 0"), std::string::npos) << board.lastMessage().toStdString();
    EXPECT_EQ(app.session().plan().toJson(), withTp);
    screenshot(*app.window, "12-board-refused");

    // 4. The keyboard: focus layer 1, Space selects it, Shift+Right takes layer 2 too, "Assign to…" -> b.
    canvas.block(1)->setFocus();
    QTest::keyClick(canvas.block(1), Qt::Key_Space);
    QTest::keyClick(canvas.block(1), Qt::Key_Right, Qt::ShiftModifier);
    EXPECT_EQ(canvas.selection(), (std::set<int64_t>{1, 2}));
    bool found = false;
    pickFromMenu([&] { board.showAssignMenu(canvas.mapToGlobal(QPoint(0, 0))); }, QString::fromStdString(b), &found);
    ASSERT_TRUE(found) << "no " << b << " in the Assign to menu";
    p = app.session().plan();
    EXPECT_EQ(workerOf(p, 1), b);
    EXPECT_EQ(workerOf(p, 2), b);
    EXPECT_EQ(p.stages.size(), 4u) << "moving middle layers away splits their stage: " << p.toJson();
    // "Remove from stage…" on layer 0's stage takes c out again.
    canvas.setSelection({0});
    pickFromMenu([&] { board.showRemoveMenu(canvas.mapToGlobal(QPoint(0, 0))); }, QString::fromStdString(c), &found);
    ASSERT_TRUE(found);
    EXPECT_EQ(app.session().plan().stages[0].ranks.size(), 1u);
    // "Add to stage…" puts it back.
    pickFromMenu([&] { board.showAddMenu(canvas.mapToGlobal(QPoint(0, 0))); }, QString::fromStdString(c), &found);
    ASSERT_TRUE(found);
    ASSERT_EQ(app.session().plan().stages[0].ranks.size(), 2u);
    EXPECT_EQ(app.session().plan().stages[0].ranks[1].worker, c);
    screenshot(*app.window, "13-board-keyboard");

    // 5. Undo (the Undo button, then Ctrl+Z) walks back through each edit; Redo forward again.
    QToolButton* undoButton = nullptr;
    for (auto* t : app.window->launchPane().findChildren<QToolButton*>())
        if (t->accessibleName() == "Undo")
            undoButton = t;
    ASSERT_NE(undoButton, nullptr);
    QTest::mouseClick(undoButton, Qt::LeftButton); // c added back
    EXPECT_NE(board.lastMessage().toStdString().find("Undone"), std::string::npos) << board.lastMessage().toStdString();
    QTest::mouseClick(undoButton, Qt::LeftButton); // the removal of c
    QTest::mouseClick(undoButton, Qt::LeftButton); // the keyboard move
    EXPECT_EQ(app.session().plan().toJson(), withTp);
    canvas.block(0)->setFocus();
    QTest::keyClick(canvas.block(0), Qt::Key_Z, Qt::ControlModifier); // the TP rank
    QTest::keyClick(canvas.block(0), Qt::Key_Z, Qt::ControlModifier); // the drag
    EXPECT_EQ(app.session().plan().toJson(), start);
    board.undoStack()->redo();
    board.undoStack()->redo();
    EXPECT_EQ(app.session().plan().toJson(), withTp);

    // The stages table is the same plan: a gap made there is named and blocks the launch; Add stage fills it.
    QTableWidget* table = board.table();
    for (auto* tabs : app.window->launchPane().findChildren<QTabWidget*>())
        tabs->setCurrentIndex(1);
    screenshot(*app.window, "13b-stages-table");
    for (auto* tabs : app.window->launchPane().findChildren<QTabWidget*>())
        tabs->setCurrentIndex(0);
    ASSERT_EQ(table->rowCount(), 2);
    table->item(0, 1)->setText(QString::number(layers - 3));
    EXPECT_NE(board.checkText().toStdString().find("not covered by any stage"), std::string::npos) << board.checkText().toStdString();
    EXPECT_FALSE(app.window->launchPane().launchButton()->isEnabled()) << "an invalid placement cannot be launched";
    // The uncovered layer waits in a lane of its own, from where it can be dragged back.
    Lane* notPlaced = canvas.lane("");
    ASSERT_NE(notPlaced, nullptr);
    EXPECT_EQ(notPlaced->accessibleName().toStdString(), "Not placed");
    EXPECT_EQ(canvas.block(layers - 2)->geometry().center().y(), notPlaced->geometry().center().y());
    ASSERT_TRUE(dropOn(canvas, BoardCanvas::layersMime({layers - 2}), laneCentre(canvas, a))) << board.lastMessage().toStdString();
    EXPECT_NE(board.checkText().toStdString().find("Valid"), std::string::npos) << board.checkText().toStdString();
    EXPECT_EQ(canvas.lane(""), nullptr);
    board.undoStack()->undo();
    board.undoStack()->undo();
    EXPECT_EQ(app.session().plan().toJson(), withTp);

    // A machine given a second shard splits the threads it donates between them (its daemon would refuse more).
    ASSERT_TRUE(dropOn(canvas, BoardCanvas::layersMime({layers - 1}), laneCentre(canvas, c))) << board.lastMessage().toStdString();
    int cThreads = 0;
    for (auto& st : app.session().plan().stages)
        for (auto& r : st.ranks)
            if (r.worker == c)
                cThreads += r.threads;
    uint32_t donated = 0;
    for (auto& w : app.session().workers())
        if (w.address == c)
            donated = w.maxThreads ? w.maxThreads : w.cores;
    EXPECT_LE(cThreads, static_cast<int>(donated)) << app.session().plan().toJson();
    EXPECT_GE(cThreads, 2) << "one thread at least for each of its two shards";
    EXPECT_EQ(board.problem().toStdString(), "") << "the thread budget holds";
    board.undoStack()->undo();
    EXPECT_EQ(app.session().plan().toJson(), withTp);
    EXPECT_TRUE(app.window->launchPane().launchButton()->isEnabled());

    // What-if: the same plan with every link as Wi-Fi 5 is predicted slower than over loopback.
    board.whatIfBox()->setCurrentText("Wi-Fi 5");
    EXPECT_NE(board.whatIfText().toStdString().find("ms/token"), std::string::npos) << board.whatIfText().toStdString();
    board.whatIfBox()->setCurrentIndex(0);

    // A saved plan is what the CLI reads, and loads back.
    const std::string dir = test::makeTempDir("gui-board");
    ASSERT_EQ(board.savePlan(QString::fromStdString(dir + "/plan.json")).toStdString(), "");
    Plan saved = Plan::fromJson([&] { std::ifstream in(dir + "/plan.json"); return std::string(std::istreambuf_iterator<char>(in), {}); }(), "plan.json");
    EXPECT_EQ(saved.stages.size(), 2u);
    board.undoStack()->undo();
    ASSERT_EQ(board.loadPlan(QString::fromStdString(dir + "/plan.json")).toStdString(), "");
    EXPECT_EQ(app.session().plan().stages[0].ranks.size(), 2u);
    std::ofstream(dir + "/bad.json") << R"({"stages": [{"layers": [0, 1], "ranks": [{"worker": "x:1", "threads": "two"}]}]})";
    EXPECT_NE(board.loadPlan(QString::fromStdString(dir + "/bad.json")).toStdString(), "");

    // The placement made on the board runs and gives the reference continuation (TP 2 then PP).
    QTest::mouseClick(app.chat().newChatButton(), Qt::LeftButton);
    json ref = test::storiesReference();
    const auto& rc = ref["cases"][0];
    ASSERT_NO_FATAL_FAILURE(app.launch());
    ASSERT_NO_FATAL_FAILURE(app.complete(rc["prompt"], static_cast<int>(rc["generated_ids"].size())));
    ASSERT_TRUE(app.waitAnswer());
    EXPECT_EQ(app.lastAnswer().text.toStdString(), rc["generated_text"].get<std::string>());
    app.window->charts().refreshTimeline();
    EXPECT_EQ(app.window->charts().timelineRows().size(), 3) << app.window->charts().timelineRows().join(", ").toStdString();
    EXPECT_GT(app.window->charts().timelineSpans(), 6);
    screenshot(*app.window, "14-board-launched");

    // The Performance pane: the reply is a row; Bench adds a measured one; Export writes CSV with the bench's
    // columns and Markdown with the original together-LLM layout; Verify gives the verdict.
    PerformancePane& perf = app.window->performance();
    ASSERT_TRUE(waitUntil([&] { return !perf.rows().empty(); }, 5000));
    EXPECT_EQ(perf.rows().front().placement, "chat");
    EXPECT_EQ(perf.rows().front().tp, 2);
    EXPECT_EQ(perf.rows().front().pp, 2);
    EXPECT_EQ(perf.benchButton()->accessibleName().toStdString(), "Bench");
    EXPECT_EQ(perf.exportButton()->accessibleName().toStdString(), "Export");
    EXPECT_EQ(perf.verifyButton()->accessibleName().toStdString(), "Verify");
    ASSERT_TRUE(perf.benchButton()->isEnabled());
    QTest::mouseClick(perf.benchButton(), Qt::LeftButton);
    EXPECT_FALSE(app.chat().sendButton()->isEnabled()) << "the chat waits while a bench runs";
    ASSERT_TRUE(waitUntil([&] { return !perf.benching() && perf.rows().size() == 2; }, 120000));
    ASSERT_TRUE(waitUntil([&] { return perf.rows().back().msPerToken > 0; }, 5000)) << "the split arrives from the ranks' records";
    const BenchRow& benched = perf.rows().back();
    EXPECT_EQ(benched.placement, "app bench");
    EXPECT_EQ(benched.decodeTokens, 64);
    EXPECT_GT(benched.decodeTps, 0);
    EXPECT_GT(benched.computeMs, 0);
    EXPECT_TRUE(app.chat().sendButton()->isEnabled());
    QTest::qWait(1200); // the timeline's once-a-second refresh, and a redraw
    // docs/screenshot.png: three machines, TP 2 x PP 2, a conversation, live charts (copied from here).
    screenshot(*app.window, "16-readme");
    // Launched: the board is locked, a drop says why.
    EXPECT_FALSE(dropOn(canvas, BoardCanvas::layersMime({0}), laneCentre(canvas, b)));
    EXPECT_NE(board.lastMessage().toStdString().find("unload"), std::string::npos) << board.lastMessage().toStdString();
    ASSERT_EQ(perf.exportTo(QString::fromStdString(dir + "/runs.csv")).toStdString(), "");
    {
        std::ifstream in(dir + "/runs.csv");
        std::string header, line;
        std::getline(in, header);
        std::string want;
        for (auto& col : benchColumns())
            want += (want.empty() ? "" : ",") + col;
        EXPECT_EQ(header, want);
        int rows = 0;
        while (std::getline(in, line))
            rows += !line.empty();
        EXPECT_EQ(rows, 2);
    }
    ASSERT_EQ(perf.exportTo(QString::fromStdString(dir + "/runs.md")).toStdString(), "");
    {
        std::ifstream in(dir + "/runs.md");
        const std::string md((std::istreambuf_iterator<char>(in)), {});
        EXPECT_NE(md.find("| app bench |"), std::string::npos) << md;
        EXPECT_NE(md.find("In the layout of the original together-LLM table"), std::string::npos) << md;
    }
    EXPECT_NE(perf.exportTo(QString::fromStdString(dir + "/runs.xls")).toStdString(), "");

    // Bench with variants: the three machines as TP 3 (8 heads do not split 3 ways: said, not run), as PP 3,
    // and the first alone, each launched in turn; then the board's placement runs again.
    const std::string running = app.session().controller()->plan().toJson();
    perf.variantsBox()->setChecked(true);
    QTest::mouseClick(perf.benchButton(), Qt::LeftButton);
    EXPECT_FALSE(app.window->launchPane().launchButton()->isEnabled()) << "Launch waits for the bench";
    ASSERT_TRUE(waitUntil([&] { return !perf.benching(); }, 240000));
    ASSERT_EQ(perf.rows().size(), 5u) << perf.failures().join("; ").toStdString();
    EXPECT_EQ(perf.rows()[3].placement, "variant: PP 3");
    EXPECT_EQ(perf.rows()[3].pp, 3);
    EXPECT_EQ(perf.rows()[4].machines, 1);
    ASSERT_EQ(perf.failures().size(), 1);
    EXPECT_TRUE(perf.failures().front().startsWith("variant: TP 3")) << perf.failures().front().toStdString();
    ASSERT_TRUE(waitUntil([&] { return app.session().launched(); }, 30000));
    EXPECT_EQ(app.session().controller()->plan().toJson(), running) << "the board's placement runs again after the variants";
    EXPECT_TRUE(app.chat().sendButton()->isEnabled());
    auto* perfDock = app.window->findChild<QDockWidget*>("performanceDock");
    ASSERT_NE(perfDock, nullptr);
    perfDock->raise();
    screenshot(*app.window, "15-performance");
    app.window->findChild<QDockWidget*>("chartsDock")->raise();
    QTest::mouseClick(perf.verifyButton(), Qt::LeftButton);
    ASSERT_TRUE(waitUntil([&] { return !perf.verifying(); }, 180000));
    EXPECT_NE(perf.verdict().toStdString().find("verdict: the placement gives the same tokens"), std::string::npos) << perf.verdict().toStdString();
}

int main(int argc, char** argv)
{
    // Settings, the key and conversations go to a private folder, not the user's.
    const std::string home = together::test::makeTempDir("gui-home");
    ::setenv("XDG_CONFIG_HOME", (home + "/config").c_str(), 1);
    ::setenv("TOGETHER_CONFIG_DIR", (home + "/config/together").c_str(), 1);
    ::setenv("TOGETHER_STATE_DIR", (home + "/state").c_str(), 1);
    ::setenv("HF_HUB_CACHE", (home + "/hub").c_str(), 1);
    ::setenv("OLLAMA_MODELS", (home + "/ollama").c_str(), 1);
    ::setenv("LLAMA_CACHE", (home + "/llama-cache").c_str(), 1);
    if (!std::getenv("QT_QPA_PLATFORM"))
        ::setenv("QT_QPA_PLATFORM", "offscreen", 1);
    std::signal(SIGPIPE, SIG_IGN);
    ::testing::InitGoogleTest(&argc, argv);
    QApplication app(argc, argv);
    QApplication::setOrganizationName("together");
    QApplication::setApplicationName("together");
    return RUN_ALL_TESTS();
}
