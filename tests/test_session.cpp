// SPDX-License-Identifier: MIT
// The app's files, without widgets: the settings file and the conversations file.
#include "test_support.h"

#include "session/conversation.h"
#include "session/settings.h"

#include <gtest/gtest.h>

#include <QSettings>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <sys/stat.h>

namespace fs = std::filesystem;
using namespace together;
using together::gui::ConversationStore;
using together::gui::Settings;

namespace {

std::string readAll(const std::string& p)
{
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

unsigned modeOf(const std::string& p)
{
    struct stat st {};
    ::stat(p.c_str(), &st);
    return st.st_mode & 0777;
}

std::vector<std::string> namesIn(const std::string& dir)
{
    std::vector<std::string> out;
    for (auto& e : fs::directory_iterator(dir))
        out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace

TEST(Settings, ValuesComeBackAsTheyWentInAndTheFileIsPrivate)
{
    const std::string dir = test::makeTempDir("settings");
    const QString path = QString::fromStdString(dir + "/together.conf");
    {
        Settings s(path);
        EXPECT_TRUE(s.problem().isEmpty());
        s.setValue("geometry", QByteArray("\x01\x00\xff binary", 10));
        s.setValue("recentModels", QStringList{"/m/a", "/m/b"});
        s.setValue("context", 4096);
        s.setValue("temperature", 0.8);
        s.setValue("keyFile", QString("/home/me/.config/together/cluster.key"));
        EXPECT_EQ(s.save(), QString());
    }
    Settings s(path);
    EXPECT_EQ(s.value("geometry").toByteArray(), QByteArray("\x01\x00\xff binary", 10));
    EXPECT_EQ(s.value("recentModels").toStringList(), (QStringList{"/m/a", "/m/b"}));
    EXPECT_EQ(s.value("context").toInt(), 4096);
    EXPECT_DOUBLE_EQ(s.value("temperature").toDouble(), 0.8);
    EXPECT_EQ(s.value("keyFile").toString(), "/home/me/.config/together/cluster.key");
    EXPECT_EQ(s.value("missing", 7).toInt(), 7);
    EXPECT_EQ(modeOf(dir + "/together.conf"), 0600u);
    EXPECT_EQ(namesIn(dir), (std::vector<std::string>{"together.conf", "together.conf.lock"})) << "no temporary left";
}

// Two windows (or two app processes) each save what they changed: neither loses the other's settings.
TEST(Settings, TwoWritersKeepEachOthersKeys)
{
    const QString path = QString::fromStdString(test::makeTempDir("settings-merge") + "/together.conf");
    Settings a(path), b(path);
    a.setValue("dtype", QString("q8"));
    EXPECT_EQ(a.save(), QString());
    b.setValue("maxTokens", 512);
    EXPECT_EQ(b.save(), QString());
    b.remove("nothing-there");
    Settings c(path);
    EXPECT_EQ(c.value("dtype").toString(), "q8");
    EXPECT_EQ(c.value("maxTokens").toInt(), 512);
    c.remove("dtype");
    EXPECT_EQ(c.save(), QString());
    EXPECT_FALSE(Settings(path).contains("dtype"));
    EXPECT_TRUE(Settings(path).contains("maxTokens"));
}

// A settings file an older version wrote with QSettings (INI) is read once, then written back as JSON.
TEST(Settings, AnOlderVersionsFileIsKept)
{
    const std::string dir = test::makeTempDir("settings-ini");
    const QString path = QString::fromStdString(dir + "/together.conf");
    {
        QSettings ini(path, QSettings::IniFormat);
        ini.setValue("geometry", QByteArray("\x01\x02\x03", 3));
        ini.setValue("recentModels", QStringList{"/m/x", "/m/y"});
        ini.setValue("context", 2048);
        ini.setValue("lastModel", "/m/x");
    }
    ASSERT_NE(readAll(dir + "/together.conf").find("[General]"), std::string::npos);
    Settings s(path);
    EXPECT_TRUE(s.problem().isEmpty()) << s.problem().toStdString();
    EXPECT_EQ(s.value("geometry").toByteArray(), QByteArray("\x01\x02\x03", 3));
    EXPECT_EQ(s.value("recentModels").toStringList(), (QStringList{"/m/x", "/m/y"}));
    EXPECT_EQ(s.value("context").toInt(), 2048);
    s.setValue("dtype", QString("bf16"));
    EXPECT_EQ(s.save(), QString());
    EXPECT_EQ(readAll(dir + "/together.conf").rfind("{", 0), 0u) << "written back as JSON";
    Settings again(path);
    EXPECT_EQ(again.value("lastModel").toString(), "/m/x");
    EXPECT_EQ(again.value("dtype").toString(), "bf16");
}

TEST(Settings, AnUnreadableFileIsKeptAsideAndNamed)
{
    const std::string dir = test::makeTempDir("settings-bad");
    std::ofstream(dir + "/together.conf") << "{ not json";
    Settings s(QString::fromStdString(dir + "/together.conf"));
    EXPECT_NE(s.problem().toStdString().find("kept as " + dir + "/together.conf.unreadable-"), std::string::npos) << s.problem().toStdString();
    EXPECT_FALSE(s.contains("anything"));
    s.setValue("context", 1024);
    EXPECT_EQ(s.save(), QString());
    EXPECT_EQ(Settings(QString::fromStdString(dir + "/together.conf")).value("context").toInt(), 1024);
}

TEST(ConversationStore, SavesWholeAndPrivate)
{
    const std::string dir = test::makeTempDir("conversations");
    const QString path = QString::fromStdString(dir + "/conversations.json");
    ConversationStore store = ConversationStore::load(path);
    ASSERT_EQ(store.conversations.size(), 1u);
    store.conversations[0].messages.push_back({});
    store.conversations[0].messages.back().text = "hello";
    EXPECT_EQ(store.save(path), QString());
    EXPECT_EQ(modeOf(dir + "/conversations.json"), 0600u);
    EXPECT_EQ(namesIn(dir), std::vector<std::string>{"conversations.json"});
    const ConversationStore back = ConversationStore::load(path);
    ASSERT_EQ(back.conversations.size(), 1u);
    ASSERT_EQ(back.conversations[0].messages.size(), 1u);
    EXPECT_EQ(back.conversations[0].messages[0].text, "hello");
    // A folder that is gone: the error says why, nothing is thrown.
    EXPECT_FALSE(store.save(QString::fromStdString(dir + "/gone/conversations.json")).isEmpty());
}
