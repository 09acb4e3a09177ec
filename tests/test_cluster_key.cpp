// SPDX-License-Identifier: MIT
// The cluster key: typeable text, typo detection, key files, the public fingerprint, and keygen.
#include "base/error.h"
#include "net/cluster_key.h"
#include "test_support.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

using namespace together;
namespace fs = std::filesystem;

TEST(ClusterKey, TextRoundTripsAndIsTypeable)
{
    for (int i = 0; i < 50; ++i) {
        ClusterKey k = ClusterKey::generate();
        ASSERT_EQ(k.bytes().size(), 32u);
        const std::string t = k.text();
        ASSERT_EQ(t.size(), 14u * 4 + 13) << t; // 14 groups of 4, 13 dashes
        for (size_t j = 0; j < t.size(); ++j) {
            if (j % 5 == 4)
                EXPECT_EQ(t[j], '-') << t;
            else
                EXPECT_NE(std::string("0123456789ABCDEFGHJKMNPQRSTVWXYZ").find(t[j]), std::string::npos) << t;
        }
        EXPECT_EQ(ClusterKey::fromText(t).bytes(), k.bytes());
    }
}

TEST(ClusterKey, ParsingForgivesWhatPeopleTypeAndCatchesTypos)
{
    ClusterKey k = ClusterKey::generate();
    std::string t = k.text();
    // lower case, spaces instead of dashes, O for 0, l for 1
    std::string relaxed;
    for (char c : t)
        relaxed += c == '-' ? ' ' : c == '0' ? 'o' : c == '1' ? 'l' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(ClusterKey::fromText("  " + relaxed + "\n").bytes(), k.bytes());
    // Any one symbol changed is caught by the check group.
    int caught = 0;
    for (size_t pos = 0; pos < t.size(); ++pos) {
        if (t[pos] == '-')
            continue;
        std::string typo = t;
        typo[pos] = t[pos] == 'X' ? 'Y' : 'X';
        try {
            ClusterKey::fromText(typo);
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("typo"), std::string::npos) << e.what();
            ++caught;
        }
    }
    EXPECT_EQ(caught, 56);
    try {
        ClusterKey::fromText(t.substr(0, 20));
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("14 groups of 4"), std::string::npos) << e.what();
    }
    try {
        ClusterKey::fromText("U" + t.substr(1));
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("has no 'U'"), std::string::npos) << e.what();
    }
    // Key files of together 0.1 (64 hex digits) still load.
    EXPECT_EQ(ClusterKey::fromText(std::string(64, 'a')).bytes(), std::string(32, '\xaa'));
}

TEST(ClusterKey, FingerprintNamesTheKeyWithoutRevealingIt)
{
    ClusterKey a = ClusterKey::generate(), b = ClusterKey::generate();
    EXPECT_EQ(a.fingerprint().size(), 16u);
    EXPECT_EQ(a.fingerprint(), ClusterKey::fromText(a.text()).fingerprint());
    EXPECT_NE(a.fingerprint(), b.fingerprint());
    EXPECT_EQ(a.text().find(a.fingerprint()), std::string::npos);
}

TEST(ClusterKey, FilesAreWrittenPrivateAndNeverOverwritten)
{
    const std::string dir = test::makeTempDir("keyfile");
    ClusterKey k = ClusterKey::generate();
    k.writeFile(dir + "/sub/folder/cluster.key"); // missing folders are made, 0700
    EXPECT_EQ(fs::status(dir + "/sub/folder/cluster.key").permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_EQ(fs::status(dir + "/sub/folder").permissions() & fs::perms::all, fs::perms::owner_all);
    EXPECT_EQ(ClusterKey::fromFile(dir + "/sub/folder/cluster.key").bytes(), k.bytes());
    try {
        ClusterKey::generate().writeFile(dir + "/sub/folder/cluster.key");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("refusing to overwrite"), std::string::npos) << e.what();
    }
    EXPECT_EQ(ClusterKey::fromFile(dir + "/sub/folder/cluster.key").bytes(), k.bytes());
    fs::permissions(dir + "/sub/folder/cluster.key", fs::perms::group_read, fs::perm_options::add);
    try {
        ClusterKey::fromFile(dir + "/sub/folder/cluster.key");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
    }
    try {
        ClusterKey::fromFile(dir + "/missing.key");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("together-cli keygen"), std::string::npos) << e.what();
    }
}

TEST(Keygen, PrintsTheTypeableKeyAndSavesItPrivately)
{
    const std::string dir = test::makeTempDir("keygen");
    std::string out, err;
    ASSERT_EQ(test::runCommand("TOGETHER_CONFIG_DIR=" + dir + "/config " + test::cliBin() + " keygen", &out, &err), 0) << err;
    EXPECT_NO_THROW(ClusterKey::fromText(out)) << out;
    EXPECT_NE(err.find("not saved"), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(dir + "/config/cluster.key"));

    ASSERT_EQ(test::runCommand("TOGETHER_CONFIG_DIR=" + dir + "/config " + test::cliBin() + " keygen --save", &out, &err), 0) << err;
    EXPECT_EQ(ClusterKey::fromFile(dir + "/config/cluster.key").bytes(), ClusterKey::fromText(out).bytes());
    EXPECT_EQ(fs::status(dir + "/config/cluster.key").permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_NE(test::runCommand("TOGETHER_CONFIG_DIR=" + dir + "/config " + test::cliBin() + " keygen --save", &out, &err), 0);
    EXPECT_NE(err.find("refusing to overwrite"), std::string::npos) << err;

    ASSERT_EQ(test::runCommand(test::cliBin() + " keygen --out " + dir + "/k", &out, &err), 0) << err;
    EXPECT_EQ(ClusterKey::fromFile(dir + "/k").text() + "\n", out);
}
