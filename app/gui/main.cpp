// SPDX-License-Identifier: MIT
// together: the desktop app. Without a display it says so and runs the headless main job instead
// (together-cli run on the same options).
#include "base/process.h"
#include "gui/main_window.h"
#include "model/run_dtype.h"

#include <QApplication>
#include <QCommandLineParser>
#include <QMessageBox>
#include <QSocketNotifier>

#include <csignal>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

int g_signalPipe[2] = {-1, -1};
void onTerminate(int)
{
    const char c = 1;
    [[maybe_unused]] auto n = ::write(g_signalPipe[1], &c, 1);
}

bool haveDisplay()
{
    const char* platform = std::getenv("QT_QPA_PLATFORM");
    if (platform && *platform)
        return true; // the user chose a platform (offscreen, xcb, wayland)
    const char* x = std::getenv("DISPLAY");
    const char* w = std::getenv("WAYLAND_DISPLAY");
    return (x && *x) || (w && *w);
}

// The headless main job: together-cli run, automatic placement over local workers.
int runHeadless(int argc, char** argv)
{
    std::string model, key, plan;
    std::string workers = "2";
    for (int i = 1; i + 1 < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--model")
            model = argv[++i];
        else if (a == "--local-workers")
            workers = argv[++i];
        else if (a == "--key-file")
            key = argv[++i];
        else if (a == "--plan")
            plan = argv[++i];
    }
    std::vector<std::string> args = {together::selfExecutableDir() + "/together-cli", "run"};
    if (!plan.empty())
        args.insert(args.end(), {"--plan", plan});
    else
        args.insert(args.end(), {"--auto", "--local-workers", workers});
    if (!model.empty())
        args.insert(args.end(), {"--model", model});
    if (!key.empty())
        args.insert(args.end(), {"--key-file", key});
    args.insert(args.end(), {"--prompt", "Once upon a time", "--max-tokens", "48"});
    std::string shown;
    for (auto& a : args)
        shown += (shown.empty() ? "" : " ") + a;
    std::fprintf(stderr, "together: no display (neither DISPLAY nor WAYLAND_DISPLAY is set), so the window cannot open.\n"
                         "together: running the headless main job instead: %s\n", shown.c_str());
    std::vector<char*> cargs;
    for (auto& a : args)
        cargs.push_back(a.data());
    cargs.push_back(nullptr);
    ::execv(cargs[0], cargs.data());
    std::perror("together: cannot start together-cli");
    return 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (!haveDisplay())
        return runHeadless(argc, argv);
    QApplication app(argc, argv);
    QApplication::setOrganizationName("together");
    QApplication::setApplicationName("together");
    QApplication::setApplicationVersion("0.3.0");
    QCommandLineParser p;
    p.setApplicationDescription("Turn the computers in your home into one LLM inference cluster.");
    p.addHelpOption();
    p.addVersionOption();
    QCommandLineOption model("model", "The model folder (Hugging Face layout).", "DIR");
    QCommandLineOption local("local-workers", "Start N worker daemons on this machine, each standing for a machine.", "N");
    QCommandLineOption key("key-file", "The cluster key file (default: the one the CLI uses).", "FILE");
    QCommandLineOption plan("plan", "A placement (plan JSON, as together-cli reads).", "FILE");
    QCommandLineOption dtype("dtype", "bf16, q8, q4, native (a GGUF file's own blocks) or f32.", "D");
    QCommandLineOption noBroadcast("no-broadcast", "Do not look for workers on the LAN; only those added by address.");
    p.addOptions({model, local, key, plan, dtype, noBroadcast});
    p.process(app);
    together::gui::StartOptions o;
    o.model = p.value(model);
    if (p.isSet(local)) {
        bool ok = false;
        o.localWorkers = p.value(local).toInt(&ok);
        if (!ok || o.localWorkers < 1 || o.localWorkers > 12) {
            std::fprintf(stderr, "together: --local-workers takes 1 to 12\n");
            return 2;
        }
    }
    o.keyFile = p.value(key);
    o.plan = p.value(plan);
    o.dtype = p.value(dtype);
    o.broadcast = !p.isSet(noBroadcast);
    if (!o.dtype.isEmpty() && !together::isRunDtype(o.dtype.toStdString())) {
        std::fprintf(stderr, "together: --dtype must be bf16, q8, q4, native or f32\n");
        return 2;
    }
    std::unique_ptr<together::gui::MainWindow> window;
    try {
        window = std::make_unique<together::gui::MainWindow>(o);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "together: %s\n", e.what());
        QMessageBox::critical(nullptr, "together", QString("The app cannot start:\n") + e.what());
        return 1;
    }
    together::gui::MainWindow& w = *window;
    // SIGTERM and SIGINT close the window as the close button does: settings, layout and the conversation are
    // saved, and the shards and local workers are stopped.
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, g_signalPipe) == 0) {
        auto* notifier = new QSocketNotifier(g_signalPipe[0], QSocketNotifier::Read, &app);
        QObject::connect(notifier, &QSocketNotifier::activated, &w, [&w] {
            char c;
            [[maybe_unused]] auto n = ::read(g_signalPipe[0], &c, 1);
            w.close();
        });
        std::signal(SIGTERM, onTerminate);
        std::signal(SIGINT, onTerminate);
    }
    w.show();
    return app.exec();
}
