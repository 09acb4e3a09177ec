// SPDX-License-Identifier: MIT
#include "session/settings.h"

#include "base/files.h"
#include "base/user_dirs.h"

#include <QDateTime>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QSettings>

namespace together::gui {

namespace {

// A byte array is stored as {"base64": "..."}; everything else as JSON has it.
QJsonValue toJson(const QVariant& v)
{
    if (v.typeId() == QMetaType::QByteArray)
        return QJsonObject{{"base64", QString::fromLatin1(v.toByteArray().toBase64())}};
    if (v.typeId() == QMetaType::QStringList)
        return QJsonArray::fromStringList(v.toStringList());
    return QJsonValue::fromVariant(v);
}

QVariant fromJson(const QJsonValue& j)
{
    if (j.isObject() && j.toObject().contains("base64"))
        return QByteArray::fromBase64(j.toObject().value("base64").toString().toLatin1());
    if (j.isArray()) {
        QStringList list;
        for (const auto& x : j.toArray())
            list.append(x.toString());
        return list;
    }
    return j.toVariant();
}

} // namespace

Settings::Settings(QString path)
    : m_path(std::move(path))
{
    m_values = read(m_path, &m_problem).value_or(QJsonObject());
}

QString Settings::defaultPath()
{
    const std::string dir = configDir();
    makePrivateDirs(dir);
    return QString::fromStdString(dir + "/together.conf");
}

std::optional<QJsonObject> Settings::read(const QString& path, QString* problem)
{
    QFile f(path);
    if (!f.exists())
        return QJsonObject();
    if (!f.open(QIODevice::ReadOnly)) {
        // Not readable (its mode, say) is not corrupt: left as it is, and not written over.
        if (problem)
            *problem = "The settings file " + path + " could not be read (" + f.errorString() + "); the defaults are used.";
        return std::nullopt;
    }
    const QByteArray bytes = f.size() > (16 << 20) ? QByteArray() : f.readAll();
    f.close();
    QJsonParseError error{};
    const QJsonDocument doc = QJsonDocument::fromJson(bytes, &error);
    if (error.error == QJsonParseError::NoError && doc.isObject())
        return doc.object();
    if (bytes.trimmed().startsWith("[General]")) {
        // An older version's QSettings file (INI): its keys, read once.
        QSettings ini(path, QSettings::IniFormat);
        QJsonObject o;
        for (const QString& key : ini.allKeys())
            o.insert(key, toJson(ini.value(key)));
        if (ini.status() == QSettings::NoError)
            return o;
    }
    // Kept aside, never overwritten: the person may want it back.
    const QString aside = path + ".unreadable-" + QDateTime::currentDateTime().toString("yyyyMMdd-HHmmss");
    QFile::rename(path, aside);
    if (problem)
        *problem = "The settings could not be read; the file was kept as " + aside + " and the defaults are used.";
    return QJsonObject();
}

QVariant Settings::value(const QString& key, const QVariant& fallback) const
{
    const auto it = m_values.constFind(key);
    return it == m_values.constEnd() ? fallback : fromJson(*it);
}

void Settings::setValue(const QString& key, const QVariant& value)
{
    m_values.insert(key, toJson(value));
    m_changed.insert(key);
}

void Settings::remove(const QString& key)
{
    m_values.remove(key);
    m_changed.insert(key);
}

QString Settings::save()
{
    if (m_changed.empty())
        return {};
    try {
        FileLock lock((m_path + ".lock").toStdString());
        QString why;
        const std::optional<QJsonObject> current = read(m_path, &why);
        if (!current)
            return why;
        QJsonObject merged = *current;
        for (const QString& key : m_changed) {
            if (m_values.contains(key))
                merged.insert(key, m_values.value(key));
            else
                merged.remove(key);
        }
        const QByteArray bytes = QJsonDocument(merged).toJson(QJsonDocument::Indented);
        atomicWrite(m_path.toStdString(), std::string_view(bytes.constData(), static_cast<size_t>(bytes.size())), 0600);
        m_values = merged;
        m_changed.clear();
    } catch (const std::exception& e) {
        return QString::fromStdString(e.what());
    }
    return {};
}

} // namespace together::gui
