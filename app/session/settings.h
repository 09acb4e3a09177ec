// SPDX-License-Identifier: MIT
#pragma once

#include <QJsonObject>
#include <QString>
#include <QVariant>

#include <optional>
#include <set>

namespace together::gui {

// The app's settings (window geometry and dock layout, the launch and chat options, recent models, the key file's
// path; never the key itself): one JSON object in $config/together.conf, mode 0600, replaced whole by atomicWrite
// (base/files.h). save() merges under the file's lock: it reads the file again and writes it with only the keys
// this object changed, so two app windows keep each other's settings. A file an older version wrote (Qt's INI
// format) is read once and written back as JSON.
//
// Values are strings, numbers, booleans, string lists and byte arrays (geometry), which come back as the type
// they went in as.
class Settings {
public:
    explicit Settings(QString path = defaultPath());

    QVariant value(const QString& key, const QVariant& fallback = {}) const;
    bool contains(const QString& key) const { return m_values.contains(key); }
    void setValue(const QString& key, const QVariant& value);
    void remove(const QString& key);
    // Writes the changed keys; "" or why it could not (the settings in memory stay as they are).
    QString save();

    const QString& path() const { return m_path; }
    // Why the file could not be read ("" when it was, or was not there); an unreadable file is kept aside.
    const QString& problem() const { return m_problem; }
    static QString defaultPath();

private:
    // The file's settings; {} when there is none, or it was unreadable and kept aside; nullopt when it cannot be
    // opened (then it must not be written over).
    static std::optional<QJsonObject> read(const QString& path, QString* problem);
    QString m_path;
    QJsonObject m_values;
    std::set<QString> m_changed;
    QString m_problem;
};

} // namespace together::gui
